"""MirroredStrategy on two logical CPU devices (run by test_keras_backends.py in its own process:
the logical devices must be configured before TensorFlow starts)."""

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras

from gradguard.keras import GuardOptimizer

jit = sys.argv[1] == "jit" if len(sys.argv) > 1 else False


def build():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])


rng = np.random.default_rng(0)
x = rng.normal(size=(16, 4)).astype("float32")
y = rng.normal(size=(16, 1)).astype("float32")

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = build()
    opt = GuardOptimizer(keras.optimizers.AdamW(1e-2, weight_decay=0.1), clip="zclip", log_every=1)
    model.compile(optimizer=opt, loss="mse", jit_compile=jit)

# Reference: one device, the whole batch, the same initial weights.
reference = build()
reference.set_weights(model.get_weights())
with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.square(reference(x) - y))
reference_grads = tape.gradient(loss, reference.trainable_variables)
expected = float(tf.linalg.global_norm(reference_grads))
reference_opt = GuardOptimizer(keras.optimizers.AdamW(1e-2, weight_decay=0.1), clip="zclip", log_every=1)
reference_opt.apply_gradients(zip(reference_grads, reference.trainable_variables))

model.fit(x, y, batch_size=16, verbose=0, shuffle=False)  # one step: 8 examples per replica
measured = float(opt.history.norm_before[0])
assert abs(measured - expected) <= 1e-5 * expected, f"norm of the all-reduced gradients: {measured} != {expected}"
for mine, theirs in zip(model.get_weights(), reference.get_weights()):  # the per-replica update path = one-device update
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


def components():
    """Every replica's copy of every model and inner-optimizer variable."""
    out = []
    for v in list(model.weights) + list(opt.inner_optimizer.variables):
        values = getattr(v.value, "values", (v.value,))
        out.append([np.array(c.numpy(), copy=True) for c in values])
    return out


before = components()
assert all(len(c) == 2 for c in before[:4]), "model variables should be mirrored on 2 devices"
xn = x.copy()
xn[12] = np.nan  # one row in the second replica's half only
model.fit(xn, y, batch_size=16, verbose=0, shuffle=False)
after = components()
for b, a in zip(before, after):
    for cb, ca in zip(b, a):
        assert cb.tobytes() == ca.tobytes(), "a skipped step changed a variable on some replica"
assert opt.skipped_steps == 1 and opt.history.skipped.tolist() == [False, True]
assert int(opt.iterations.numpy()) == 1

model.fit(x, y, batch_size=16, verbose=0, shuffle=False)
final = components()
for replicas in final:
    assert all(r.tobytes() == replicas[0].tobytes() for r in replicas), "replicas diverged"
assert any(f[0].tobytes() != b[0].tobytes() for f, b in zip(final[:4], before[:4])), "the finite step did not train"
assert int(opt.iterations.numpy()) == 2
print("OK", measured, expected)
