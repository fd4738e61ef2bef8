from .gumbel_gate import (GATE_MODES, GATE_TYPES, ChannelGate, DependentGateHead,
                          GateRecord, GatedBlockMixin, IndependentGateHead, gate_records,
                          iter_gated_blocks, sample_gates)
from .mod import (FUSIONS, SELECTIONS, MoDBlock, gather_channels, record_selections,
                  top_channels)
from .pix import PIX_MODES, PiX, pick_or_mix, pix_groups, pix_reference
from .selector import ChannelScorer, num_selected_channels

__all__ = [
    'ChannelScorer', 'num_selected_channels', 'MoDBlock', 'gather_channels',
    'record_selections', 'top_channels', 'FUSIONS', 'SELECTIONS', 'PiX', 'pick_or_mix',
    'pix_reference', 'pix_groups',
    'PIX_MODES', 'GATE_MODES', 'GATE_TYPES', 'ChannelGate', 'DependentGateHead',
    'IndependentGateHead', 'GateRecord', 'GatedBlockMixin', 'sample_gates', 'iter_gated_blocks',
    'gate_records'
]
