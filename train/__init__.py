"""Training: the image dataset, transfer-learning models, training, evaluation and comparison."""
