"""Every threshold the diagnosis rules use, with the reason it has the value it has."""

# --- vanishing -------------------------------------------------------------------------------
# Back-propagated error shrinking 1000x from the last layer to the first: the first layers then
# learn three orders of magnitude slower than the last. A depth-20 sigmoid MLP at PyTorch's
# default init sits near 1e-12; tanh with Xavier at depth 20 near 0.2 and ReLU with He near 1
# (papers.md, 9.3), so the bound separates the pathological from the merely imperfect.
VANISHING_ERROR_RATIO = 1e-3
# Same bound for ||dL/dh_t|| across the time steps of a recurrent layer.
VANISHING_TIME_RATIO = 1e-3
# Without back-propagated errors, a weight-gradient ratio this small across depth is only a hint
# (Glorot & Bengio 2010, eq. 14: weight gradients can look level while errors vanish, and the
# converse); it is reported as "info" with a pointer to the deltas probe.
WEIGHT_GRAD_RATIO_HINT = 1e-4
# A layer counts as a layer of the depth profile when at least this many are measured.
MIN_LAYERS_FOR_DEPTH = 3
# Loss plateau: the median loss of the last quarter of the run is less than 10% below that of the
# quarter before (medians of a few dozen noisy minibatch losses move by several percent on their
# own; the update-ratio condition below is what makes the verdict specific)...
PLATEAU_RELATIVE_IMPROVEMENT = 0.10
# ...while the input-side layer's weights move less than 1e-5 of their norm per step (healthy
# training sits around 1e-3; 100x below that the layer has all but stopped learning).
TINY_UPDATE_RATIO = 1e-5
MIN_STEPS_FOR_TRENDS = 40

# --- exploding ------------------------------------------------------------------------------
# Errors growing 1000x toward the input (the mirror image of the vanishing bound).
EXPLODING_ERROR_RATIO = 1e3
EXPLODING_TIME_RATIO = 1e3
# Total norm grown 100x between the first and last tenth of the run (medians, so single spikes do
# not count): the runaway growth that precedes divergence in the cliff regime of Pascanu et al.
EXPLODING_GROWTH = 1e2
# Loss oscillation: the last OSCILLATION_WINDOW losses sit 1.5x above the best 10-step average
# reached before them, and bounce by more than 3x (95th over 5th percentile). Both are needed:
# near convergence minibatch noise alone makes the loss bounce by 2-6x relative to its small
# level (measured on digits), but it does not climb back above its best.
OSCILLATION_WINDOW = 100
OSCILLATION_REGRESSION = 1.5
OSCILLATION_SPREAD = 3.0

# --- non-finite -----------------------------------------------------------------------------
# More than this share of steps skipped is an error, not an occasional overflow.
NONFINITE_ERROR_FRACTION = 0.05

# --- activations ----------------------------------------------------------------------------
# Half the units of a bounded activation saturated (derivative < 10% of its maximum, see
# _probes/_activations.py): the layer passes back less than a tenth of the error for most units.
SATURATED_FRACTION = 0.5
# Half the units of a ReLU-family layer inactive on every example of the batch.
DEAD_FRACTION = 0.5

# --- clipping -------------------------------------------------------------------------------
# A fixed-threshold clipper active on more than 90% of steps rescales (nearly) every update: it
# has become a learning-rate cut rather than a guard against spikes.
CLIPPING_ALWAYS_FRACTION = 0.9
MIN_STEPS_CLIPPING = 50
# Clipped on every one of this many steps: said at once, refined after MIN_STEPS_CLIPPING steps.
MIN_STEPS_CLIPPING_EARLY = 16
# Never active over this many steps: it only guards against rare spikes (fine if that is the aim).
MIN_STEPS_CLIPPING_NEVER = 200
# Pascanu et al. 2013: "values from half to ten times this average [norm] can still yield
# convergence". gradguard recommends the 90th percentile of observed norms (clip the top tenth)
# and reports where that falls in Pascanu's range.
PASCANU_LOW, PASCANU_HIGH = 0.5, 10.0
RECOMMEND_PERCENTILE = 90.0
MIN_STEPS_RECOMMEND = 20

# --- scale of weights and updates -------------------------------------------------------------
# Weights more than 2x off the Xavier/He scale for their activation start far from criticality.
INIT_SCALE_FACTOR = 2.0
# Update-to-weight ratio per step: ~1e-3 is the usual healthy level; above 1e-1 a layer's weights
# change by a tenth per step (learning rate too high for it).
UPDATE_RATIO_HIGH = 1e-1

# --- learning rate and blow-ups ---------------------------------------------------------------
# A fast blow-up: the total norm growing at least 10x per step over two steps (or one 10x step
# right before the first non-finite one). A healthy step changes the norm by a few percent; the
# GPT-2 at lr 30 of the issue went 2.95, 57.8, 3082, 3.5e18, NaN.
BLOWUP_GROWTH = 10.0
BLOWUP_STEPS = 2
# The update-to-weight ratio a healthy run sits near (per step): about 1e-3 once training has
# settled. A remedy that names a learning rate from the ratio of the *first* step aims at 1e-2
# instead: Adam's first update moves every weight by about lr (m / sqrt(v) = +-1), so its ratio is
# lr / std(w), 1e-2 at lr 1e-3 for PyTorch's default init of a 64-wide layer (the zoo's healthy
# runs: 0.0004 to 0.013 at step 1, 0.003 to 0.008 later). Above UPDATE_RATIO_HIGH (below) the
# learning rate is evidence by itself.
UPDATE_RATIO_TARGET = 1e-3
UPDATE_RATIO_TARGET_FIRST = 1e-2
# Adam-family without warm-up: a first update of a fifth of the weights' scale (the zoo's healthy
# runs stay below 0.1; a post-LN transformer at lr 0.05 reaches 0.38) is the unstable early phase
# warm-up exists for (Liu et al. 2020; Xiong et al. 2020 for post-LN).
FIRST_STEP_RATIO_HIGH = 0.2
# The loss at the end above this factor of its best 10-step median while the learning rate rose
# more than LR_RISE since that best: the schedule went past the largest stable learning rate
# (a 10-step median of minibatch losses moves by a few percent on its own).
LOSS_REGRESSION = 1.2
LR_RISE = 1.5
# One step's learning rate this many times the run's median: a spike (a schedule bug, a restart).
LR_SPIKE = 10.0
# A run that diverged by learning rate keeps this share of the last stable rate as its remedy:
# half the largest stable rate leaves a margin for the noise of minibatch curvature.
LR_SAFETY = 0.5
# Warm-up for Adam-family optimizers when a remedy adds one: a tenth of the steps seen, within
# these bounds (Liu et al. 2020: Adam's variance estimate is unreliable for the first steps).
WARMUP_MIN, WARMUP_MAX = 20, 2000

# --- data and precision -------------------------------------------------------------------------
# float16's largest finite value.
FP16_MAX = 65504.0
# A GradScaler that skipped this share of at least SCALER_MIN_STEPS steps is not recovering.
SCALER_SKIP_FRACTION = 0.9
SCALER_MIN_STEPS = 8
# A GradScaler's calibration: an init_scale 2**k too large overflows for about k steps (each halves
# the scale) and float16 spans 2**40 (2**-24 to 2**16), so an opening run of up to 24 skips is a
# scale guessed high; after it, the scale's growth overflows at most once or twice in a row.
SCALER_CALIBRATION_SKIPS = 24
SCALER_BACKOFF_RUN = 2
# A loss summed over the batch: the first loss divided by the batch size is a plausible
# per-example loss (at most this), while the loss itself is this many times larger than one.
SUMMED_LOSS_MIN = 20.0
SUMMED_BATCH_MIN = 32

# --- init ---------------------------------------------------------------------------------------
# The pre-activation scale changing by more than 2x per layer, or 10x over the net, at the first
# step: the init itself pushes the signal away from the scale the activations need.
INIT_DEPTH_FACTOR = 2.0
INIT_TOTAL_FACTOR = 10.0
