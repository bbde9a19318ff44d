"""Everything that knows Label Studio's shapes: the label config, tasks <-> engine rows, prediction
result JSON, annotations, and the one SDK client. Nothing here serves HTTP or runs a model."""
