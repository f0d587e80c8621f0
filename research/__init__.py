"""A JAX/Flax lab for recurrent, convolutional-recurrent and variational models.

The one training loop is `research.train.train_and_evaluate(config, workdir)`.
"""
