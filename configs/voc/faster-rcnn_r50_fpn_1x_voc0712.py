# Faster R-CNN R50-FPN baseline (CNN-MoD paper, Table 4): mmdet's recipe unchanged -- VOC07+12
# trainval (repeated 3x, 4 epochs = 12 effective), VOC07 test, (1000, 600) keep-ratio resize,
# flip 0.5, 8 GPUs x 2 = batch 16, SGD lr 0.01, momentum 0.9, wd 1e-4, lr x0.1 after epoch 3,
# VOC mAP with 11-point interpolation (the base's eval_mode='11points'), backbone from
# torchvision's ImageNet ResNet-50 (torchvision://resnet50, downloaded by mmengine).
_base_ = 'mmdet::pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py'

# Not needed by the standard ResNet; kept so every config in configs/ loads the same way.
custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)
