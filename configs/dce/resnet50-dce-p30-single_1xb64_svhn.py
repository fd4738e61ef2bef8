# Single-stage dynamic channel execution (Sec. 4, Table 2's procedure) on ResNet-50 / SVHN, 30%
# of the channels: CUCB selection for the first epochs, then the topology is fixed by mean
# saliency (Alg. 1 step 12) and the same model trains on to the end -- no export, no second
# run. The paper runs this for VGG-19 on CIFAR-10 only, switching after its first 40 of 160
# epochs (a quarter); the same quarter of SVHN's 20 epochs is 5.
_base_ = './resnet50-dce-p30_1xb64_svhn.py'
custom_hooks = [dict(type='ChannelBanditHook', fix_at_epoch=5)]
