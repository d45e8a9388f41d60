"""The bottom layer: MVFA's numbers (config), the user-error family (errors), the flag registry (flags), where
outputs go and how they are written (outputs), checkpoint sidecars (sidecar) and CPU threads (threads).
Torch-free; the only part of mvfa that CLIP/ and dataset/ may import."""
