"""Running the method: devices and precision (runtime), checkpoints and resume state, training steps, the
evaluation of a test set, model selection, results files, a script's session and heatmaps. Imports the
layers below it only (mvfa.common, mvfa.method, CLIP/, dataset/, loss, prompt, utils)."""
