"""The population engine: K trials of one model shape trained as one batched model.

    layers.py   batched layers: Linear as baddbmm, convolutions grouped by member, per-member batch norm and dropout
    stack.py    stack(models) -> Population, unstack(pop, k, model), shrink (drop members)
    optim.py    stacked optimizers (AdamW, Adam, SGD, RMSprop, Adagrad), per-member settings as (K,) tensors
    loss.py     each member's mean loss (compute_loss per member) from one batched forward
    loop.py     train_population: each member's rows, shuffles, loss, schedule, validation and early stopping
"""
