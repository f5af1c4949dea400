"""The TOML files researchers write, as validated objects: studies, the search space, the calibration plan."""
