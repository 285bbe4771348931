"""The causal LM at work on prepared examples, shared by training and evaluation.

batches (padded or packed rows), attention that stays inside each packed example, and the loss taken only at
answer tokens with the output layer fused into the cross-entropy.
"""
