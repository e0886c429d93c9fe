"""Writing a model version: SavedModel, TensorFlow for Poets graph, TFLite."""
