"""Recipes: a whole pipeline (stages, eval, gates, report) as one YAML file, `compress run RECIPE`.

`yaml_lines` reads YAML keeping each key's line, `overrides` applies `--set`, `schema` is the
typed recipe (`version: 1`) and its loader, whose errors name the field and the line,
`fingerprint` decides when a stage's cached output is still valid, `runner` plans and runs the
stages and the eval, and `report` writes `report.md`, `results.json` and `junit.xml` into the run
directory.
"""
