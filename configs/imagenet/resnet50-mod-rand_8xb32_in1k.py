# "MoD50 rand." (CNN-MoD paper, Table 1): ResNet50-MoD whose MoD blocks pick k random channels
# instead of the Channel Selector's top-k -- the ablation showing that selection matters.
_base_ = './resnet50-mod_8xb32_in1k.py'

model = dict(backbone=dict(selection='random'))
