"""MLflow: the client every stage logs through, run params/tags, the team server, sync, UI. Imported in the train env: no imports here."""
