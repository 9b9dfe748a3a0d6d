"""Step 3 of the lifecycle: read, validate, clean and split a dataset, with a report and a dataset card."""
