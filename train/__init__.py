"""det-toolkit training: data readers, model builders, the training loop and COCO evaluation."""
