"""What both stages run on: the training loop, Orbax checkpoints, the device mesh and shardings,
optimizers, the non-finite guard, preemption, metric writers, image helpers and the config fields
every trainer shares. Nothing here knows what is being trained."""
