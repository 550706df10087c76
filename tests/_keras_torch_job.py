"""GuardOptimizer on Keras's torch backend (run by test_keras_backends.py with KERAS_BACKEND=torch)."""

import os

os.environ["KERAS_BACKEND"] = "torch"
import keras
import numpy as np
import torch

import gradguard as gg
from gradguard.keras import GuardOptimizer

assert keras.backend.backend() == "torch"
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
opt = GuardOptimizer(keras.optimizers.AdamW(1e-2, weight_decay=0.1), clip=gg.ZClip(warmup_steps=2), log_every=2, max_consecutive_skips=1)
rng = np.random.default_rng(0)
x = torch.tensor(rng.normal(size=(16, 4)).astype("float32"))
y = torch.tensor(rng.normal(size=(16, 1)).astype("float32"))


def grads_of(x):
    for v in model.trainable_variables:
        v.value.grad = None
    loss = torch.mean((model(x) - y) ** 2)
    loss.backward()
    return [v.value.grad.detach().clone() for v in model.trainable_variables]


# Custom loop: the norm is the torch global norm of the same gradients.
expected = []
for i in range(3):
    grads = grads_of(x * (1 + i))
    expected.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
    opt.apply(grads, model.trainable_variables)
np.testing.assert_allclose(opt.history.norm_before, expected, rtol=1e-6)


def state():
    return [np.array(keras.ops.convert_to_numpy(v), copy=True) for v in list(model.weights) + list(opt.inner_optimizer.variables)]


before = state()
xn = x.clone()
xn[0, 0] = float("nan")
opt.apply(grads_of(xn), model.trainable_variables)
assert all(a.tobytes() == b.tobytes() for a, b in zip(before, state())), "a skipped step changed the state"
assert opt.skipped_steps == 1 and int(keras.ops.convert_to_numpy(opt.iterations)) == 3
try:
    opt.apply(grads_of(xn), model.trainable_variables)
except gg.NonFiniteGradientError as exc:
    assert all(v.path in str(exc) for v in model.trainable_variables), str(exc)
else:
    raise AssertionError("the consecutive-skip limit did not raise")

# fit: the same optimizer class in model.compile.
keras.utils.set_random_seed(1)
model2 = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
opt2 = GuardOptimizer(keras.optimizers.Adam(1e-2), clip="autoclip", log_every=3)
model2.compile(optimizer=opt2, loss="mse")
xf = rng.normal(size=(32, 4)).astype("float32")
xf[9] = np.nan
model2.fit(xf, rng.normal(size=(32, 1)).astype("float32"), batch_size=8, verbose=0, shuffle=False)
assert opt2.history.skipped.tolist() == [False, True, False, False], opt2.history.skipped
assert int(keras.ops.convert_to_numpy(opt2.iterations)) == 3
print("OK")
