"""Score your own images with MVFA adapters: a CSV/JSON of scores and a heatmap per image.

    python predict.py --checkpoint ckpt/few-shot/Brain.pth --obj Brain --out results/ scans/
    python predict.py --checkpoint ckpt/zero-shot/Brain.pth --obj 'brain MRI' \\
        --reference normal_scans/ --out results/ scans/          # normal-only few-shot

Inputs and references are image files, DICOM files, DICOM series folders, NIfTI volumes (.nii,
.nii.gz) or folders of them (searched recursively); images of any size, grayscale, RGB, RGBA,
16-bit PNG or JPEG. Volumes are scored slice by slice along --axis (--slices: a range), with
intensities by --window; each also gets its score (the maximum over its slices) and its anomaly map
as a NIfTI on the input's grid and affine (maps/<name>.nii.gz). See dataset/volumes.py. `--obj`
names the object in the text prompts: one of the BMAD objects or any free text. Checkpoints are
ours or the authors' released ones (same format).

Image score: the det head, as the paper's classification path (text probability and memory-bank
distance averaged over patches); it is trained for every object, where the seg head is trained
only on objects with masks. Heatmap: the seg head's pixel map of the same parts.

What the score means:
- Without --reference (zero-shot): the abnormal probability the text prompts give, averaged over
  patches and over the adapted levels, in [0, 1]. It is not calibrated: compare it between images
  scored with the same checkpoint and --obj only.
- With --reference (at least 2 normal images; zero-shot text fused with the few-shot memory bank
  of the augmented references): each part is standardised by the reference images themselves,
  then the two are averaged with the paper's 0.5 / 0.5 weights:
      score = 0.5 * (zero - mean_ref(zero)) / std_ref(zero) + 0.5 * (few - mean_ref(few)) / std_ref(few)
  mean_ref and std_ref are over the un-augmented reference images. A reference's few-shot part is
  its distance to the bank of the *other* references (leave-one-out), as its own copies would
  give 0; so that images and references are measured alike, an image's few-shot part is its
  distance to a bank of k - 1 of the k references, averaged over the k ways of leaving one out
  (per patch: ((k - 1) * nearest + second nearest reference) / k, one search of the whole bank);
  an input that is one of the references (the same file) is scored leave-one-out, as the calibration scores it.
  So 0 is a typical normal image and the unit is the spread among the references: a score of 3
  is three reference standard deviations above normal. The same references give the same
  scale, so scores compare across calls; more references give a steadier scale.
Heatmaps use the same units per pixel. With references the scale is fixed: red at 4 reference
standard deviations, blue at the reference mean. Without, it is per image: blue at the map's
lowest probability, red at its highest (often all near 0, which a 0-1 scale would paint one
blue), so colours do not compare across images. Drawn on each input at its own size (the longer
side capped at 1024 px), titled, with a colour bar of that scale and a caption saying which.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from mvfa.runs.cli import add_model_arguments, add_scan_arguments, run
from mvfa.common.flags import MODEL_FLAGS, FlagError, FlagParser
from mvfa.common.outputs import FILE, Output, check_outputs
from dataset.validate import decode_all
from mvfa.runs.scan_inputs import find_inputs
from mvfa.common.sidecar import adopt_sidecar_flags, check_checkpoint_exists


def build_parser() -> FlagParser:
    p = FlagParser(description=__doc__)
    p.add_argument('inputs', nargs='*', type=Path,
                   help='image files or folders to score; after a flag that takes several values '
                        '(--reference, --features_list), put them after -- or give them with --input')
    p.add_argument('--input', nargs='+', action='extend', type=Path, default=[], dest='input_paths',
                   help='image files or folders to score, anywhere on the line (with or instead of the positional)')
    p.add_argument('--checkpoint', type=Path, required=True,
                   help="adapter weights (.pth, ours or the authors'); a zero-shot one with --reference: normal-only")
    p.add_argument('--obj', required=True, help='object for the text prompts: a BMAD object name or any free text')
    p.add_argument('--reference', type=Path, nargs='+', default=None,
                   help='normal images (files or folders, at least 2): memory bank and score calibration')
    p.add_argument('--out', type=Path, required=True, help='folder for scores.csv, scores.json and heatmaps/')
    p.add('batch_size', help='images per batch (scores do not depend on it)')
    add_scan_arguments(p)
    p.add('slices')
    add_model_arguments(p)
    return p


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    """Score the inputs; returns the rows written to scores.csv / scores.json."""
    arguments = build_parser()
    args = arguments.parse_args(argv)
    if not args.inputs + args.input_paths:
        raise FlagError('no images to score: name files or folders after the flags (or after --), or with --input')
    adopt_sidecar_flags(args, arguments.given(argv, MODEL_FLAGS), args.checkpoint)
    check_outputs([Output('--out', args.out), Output('--out', args.out / 'heatmaps'),
                   Output('--out', args.out / 'scores.csv', FILE), Output('--out', args.out / 'scores.json', FILE)])
    # Every input read (scans) or decoded (image files) before the model is built and anything written.
    inputs, scans = find_inputs(args.inputs + args.input_paths, 'input', args)
    references = find_inputs(args.reference, 'reference', args)[0] if args.reference else None
    image_files = dict.fromkeys(image.path for image in inputs + (references or []) if image.scan is None)
    decode_all([(path, None) for path in image_files], 'the images')
    check_checkpoint_exists(args.checkpoint)
    # Imported once the flags, inputs and checkpoint path are checked: those answer without loading torch.
    from mvfa.runs.prediction import predict
    return predict(args, inputs, scans, references)


if __name__ == '__main__':
    raise SystemExit(run(main))
