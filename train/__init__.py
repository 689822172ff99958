"""Training: tf.data pipelines and transfer-learning models (not built yet)."""
