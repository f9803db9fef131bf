"""Dataset readers (COCO JSON, Pascal VOC XML, YOLO txt), validation and the training dataset."""
