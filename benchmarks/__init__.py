"""gradguard's benchmarks: every figure a ratio of contenders timed side by side in one run.

Run ``python -m benchmarks.run [--smoke] [--device cpu|cuda] [--out DIR]``. One module per
table: ``grad_pass`` (the gradient pass against clip_grad_norm_, the memory-bandwidth floor and
the peers' ways of measuring), ``train_step`` (training-step overhead), ``clippers`` (adaptive
clipper cost at step 100 and step 100,000) and ``gpu_syncs`` (host-device synchronizations per
Guard step, CUDA only). BENCHMARKS.md at the repository root gives the method and the results.
"""
