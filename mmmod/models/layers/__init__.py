from .mod import FUSIONS, SELECTIONS, MoDBlock, gather_channels, record_selections
from .selector import ChannelScorer, num_selected_channels

__all__ = [
    'ChannelScorer', 'num_selected_channels', 'MoDBlock', 'gather_channels',
    'record_selections', 'FUSIONS', 'SELECTIONS'
]
