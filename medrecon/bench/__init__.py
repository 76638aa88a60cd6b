"""Every ``medrecon bench X``: measurement code here, argparse glue in `medrecon.bench.commands`.

- ``operators``: MRI SENSE operator timings against fastMRI-style and SigPy (`operators`);
- ``ct-operators``: CT projector/FBP timings against scikit-image (`ct_operators`);
- ``solvers``: generic solvers' error vs NFE and DeepCache speed-up (`solver_problems`, `solvers`);
- ``recon``: MRI reconstruction quality vs speed (`recon`: rows, run, report, merge, plots);
- ``pipeline``: every stage of ``medrecon recon`` vs SigPy, peak memory (`pipeline`);
- ``ct``: low-dose CT denoising quality and speed (`ct`, `ct_figures`).

Shared: `timing` (wall-clock), `tables` (rendering and the atomic writer of every output),
`figures` (pyplot set-up and the reference/image/error grid).
"""
