"""The default model's toy world, apart from the runtime: synthetic clips of one coloured shape moving
(`synthetic`, what `train/train_tiny.py` trains on) and their read-back motion metrics (`evaluation`,
what tests, `benchmarks/ablation.py` and the examples measure samplers with). The paper's own
evaluation (FVD & co.) is `ti2v_jax.metrics`."""
