"""Speed settings (confiner_core.diffusers_backend.speed) change speed, never outputs.

torch.compile runs here with a counting backend that executes dynamo's graphs as they are (no inductor), so the
tests see which blocks were compiled, how many graphs were made and that outputs are unchanged, in seconds."""

import pytest
import torch

import tiny_diffusers as T
from confiner_core.diffusers_backend.speed import (BLOCK_CLASSES, EAGER, FAST, SpeedSettings, apply_speed_settings,
                                                   compile_blocks, to_channels_last)


class CountingBackend:
    """A torch.compile backend: counts graphs made and graph calls, runs each graph unchanged."""

    def __init__(self):
        self.graphs = 0
        self.calls = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1

        def run(*args):
            self.calls += 1
            return gm.forward(*args)
        return run


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def sd_call(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    c = torch.randn(2, 77, T.SD_WIDTH, generator=g)
    with torch.no_grad():
        return unet(x, 321.5, encoder_hidden_states=c).sample


def t2v_call(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 3, 8, 8, generator=g)
    c = torch.randn(1, 77, T.T2V_WIDTH, generator=g)
    with torch.no_grad():
        return unet(x, 321.5, encoder_hidden_states=c).sample


def test_settings_describe_themselves_and_reject_unknown_scopes():
    assert EAGER.describe() == "eager"
    assert FAST.describe() == "channels_last + cudnn.benchmark + torch.compile (blocks)"
    with pytest.raises(ValueError, match="compile='graph'"):
        SpeedSettings(compile="graph")


def test_channels_last_converts_2d_convolution_weights_only_and_keeps_outputs():
    unet = T.tiny_unet3d().eval()  # 2-D convolutions and 3-D (temporal) ones
    before = t2v_call(unet)
    four_d = [p for p in unet.parameters() if p.dim() == 4]
    five_d = [p for p in unet.parameters() if p.dim() == 5]
    assert to_channels_last(unet) == len(four_d) > 0
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    assert all(p.is_contiguous() for p in five_d)
    torch.testing.assert_close(t2v_call(unet), before, rtol=1e-5, atol=1e-5)


def test_blocks_are_compiled_once_per_shape_and_shared_between_instances():
    backend = CountingBackend()
    settings = SpeedSettings(compile="blocks", backend=backend)
    a, b = T.tiny_unet2d().eval(), T.tiny_unet2d().eval()
    b.load_state_dict({k: v + 0.01 for k, v in a.state_dict().items()})  # same shapes, other weights
    expected = {"a": sd_call(a), "b": sd_call(b)}
    blocks = [m for m in a.modules() if type(m).__name__ in BLOCK_CLASSES]
    nested = [m for m in blocks for parent in blocks if parent is not m and m in list(parent.modules())]
    assert compile_blocks(a, settings) == len(blocks) - len(nested) > 0
    assert compile_blocks(b, settings) == len(blocks) - len(nested)
    assert sd_call(a).equal(expected["a"])
    graphs = backend.graphs
    assert 0 < graphs <= len(blocks) - len(nested)
    calls = backend.calls
    assert sd_call(b).equal(expected["b"])  # other weights, same graphs: parameters are graph inputs
    assert backend.graphs == graphs, "the second UNet's blocks should reuse the first one's graphs"
    assert backend.calls > calls


def test_apply_speed_settings_on_a_video_unet_keeps_outputs():
    backend = CountingBackend()
    unet = T.tiny_unet3d().eval()
    before = t2v_call(unet)
    done = apply_speed_settings([unet], SpeedSettings(channels_last=True, compile="full", backend=backend))
    assert done["compiled"] == 1 and done["channels_last_tensors"] > 0
    torch.testing.assert_close(t2v_call(unet), before, rtol=1e-5, atol=1e-5)
    assert backend.graphs >= 1 and backend.calls >= 1
