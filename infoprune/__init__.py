"""Runtime glue of the entry points: building components from configs, logging, the train loop driver."""
