"""`make train` and `make merge`: Axolotl config, validation, plugins, launchers. Loaded in the train env by Axolotl: keep this file empty of imports."""
