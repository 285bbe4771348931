"""The causal LM at work on prepared examples, shared by training, evaluation and generation.

batches (padded or packed rows), attention that stays inside each packed example, and the loss taken only at
answer tokens with the output layer fused into the cross-entropy.
"""
