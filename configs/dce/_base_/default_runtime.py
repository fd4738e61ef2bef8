# mmpretrain's runtime, with mmmod imported (its datasets, backbones and ChannelBanditHook).
_base_ = 'mmpretrain::_base_/default_runtime.py'
custom_imports = dict(imports=['mmmod'], allow_failed_imports=False)
