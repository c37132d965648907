"""TOML sections the small ``nnfleet simulate`` configs of the tests share: a fleet of
``synthetic_images`` with two classes a device, and the two-layer MLP they train. A test
writes the rest of its config (rounds, algorithms, [train], [server], [fleet], [faults])
itself, where what it tests can be read."""

from __future__ import annotations


def synthetic_images(devices: int, shape: tuple[int, int, int], samples: int,
                     noise: float | None = None) -> str:
    """``[data]``: ``devices`` devices of ``samples`` images of ``shape`` each, every device
    dealt two of the ten classes (strong label skew); ``noise`` as the kind's default when
    None."""
    noise_line = "" if noise is None else f"noise = {noise}\n"
    return (f'\n[data]\nkind = "synthetic_images"\ndevices = {devices}\n'
            f"shape = [{', '.join(map(str, shape))}]\n"
            f'partition = "k_classes"\nk = 2\nsamples-per-device = {samples}\n{noise_line}')


def mlp(shape: tuple[int, ...], hidden: int, head: bool = False) -> str:
    """``[model]``: input of ``shape``, flatten, fc1 (``hidden`` units, relu), fc2 (10 units);
    with ``head``, fc2 is the personal head (``head = ["fc2"]``)."""
    return ("\n[model]\nlayers = [\n"
            f'  {{type = "input", name = "in", input_shape = "{":".join(map(str, shape))}"}},\n'
            '  {type = "flatten", name = "flat"},\n'
            f'  {{type = "fully_connected", name = "fc1", unit = {hidden}, activation = "relu"}},\n'
            '  {type = "fully_connected", name = "fc2", unit = 10},\n'
            "]\n" + ('head = ["fc2"]\n' if head else ""))
