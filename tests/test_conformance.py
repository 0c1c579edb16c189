"""Every registered attribution passes the exported conformance checks on a real tiny model."""

import pytest
import torch

from harness.api import Example
from harness.conformance import check_attribution
from harness.plugins import get_registry, reset_registry

FORGET = [Example(f"Question: Who is author {i}?\nAnswer:", f" Author {i} writes about dragons.") for i in range(6)]
RETAIN = [Example(f"Question: Where is city {i}?\nAnswer:", f" City {i} lies by a river.") for i in range(6)]

reset_registry()
ATTRIBUTIONS = get_registry().names("attribution")


@pytest.mark.parametrize("name", ATTRIBUTIONS)
@pytest.mark.parametrize("ratio", [0.1, 0.5, 1.0])
def test_attribution_conformance(name, ratio, tiny):
    model, tok = tiny
    check_attribution(name, model, tok, FORGET, RETAIN, ratio=ratio)


def test_random_mask_depends_on_the_seed(tiny):
    from harness.api import AttributionData

    model, tok = tiny
    random = get_registry().build("attribution", "random")
    a = random.scores(AttributionData(model, tok, [], [], seed=1)).scores
    b = random.scores(AttributionData(model, tok, [], [], seed=2)).scores
    assert any(not (a[n] == b[n]).all() for n in a)


OBJECTIVES = get_registry().names("objective")
OBJECTIVE_CONFIG = {"rmu": {"layer": 1, "update": [r"model\.layers\.1\..*"]}}  # the tiny model has 2 layers


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_conformance(name, tiny):
    from harness.conformance import check_objective

    model, tok = tiny
    check_objective(name, model, tok, FORGET, RETAIN, config=OBJECTIVE_CONFIG.get(name))


PROBES = get_registry().names("probe")
PROBE_CONFIG = {"relearn": {"steps": 2}, "quantization": {"settings": [{"bits": 4, "group_size": None}]},
                "mia": {"limit": 8}, "extraction": {"limit": 8}}


@pytest.mark.parametrize("name", PROBES)
def test_probe_conformance(name, tiny):
    from harness.conformance import check_probe

    model, tok = tiny
    check_probe(name, model, tok, config=PROBE_CONFIG.get(name))


def test_probe_conformance_catches_a_probe_that_changes_the_model(tiny):
    from dataclasses import dataclass

    from harness import Metric, Probe, option
    from harness.conformance import ConformanceError, check_probe

    @dataclass
    class Cfg:
        size: float = option(1e-3, "how far it moves the weights")

    class Careless(Probe):
        """A probe that perturbs the model it is given."""

        name = "careless"
        Config = Cfg

        def run(self, model, ctx):
            with torch.no_grad():
                next(model.parameters()).add_(self.config.size)
            return {"x": Metric(1.0, "info")}

    get_registry().add("probe", Careless)
    model, tok = tiny
    with pytest.raises(ConformanceError, match="careless: the probe changed parameter"):
        check_probe("careless", model, tok)


@pytest.mark.parametrize("name", get_registry().names("optimizer"))
def test_optimizer_conformance(name):
    from harness.conformance import check_optimizer

    check_optimizer(name)


def _scores_of(make):
    """An attribution whose scores are `make(name, parameter)`, registered for the test."""
    from dataclasses import dataclass

    from harness import Attribution, AttributionResult, option  # the stable import surface

    @dataclass
    class Cfg:
        scale: float = option(1.0, "unused")

    class Made(Attribution):
        """A test attribution."""

        name = "made"
        Config = Cfg

        def scores(self, data):
            return AttributionResult({n: t for n, p in data.model.named_parameters()
                                      if (t := make(n, p)) is not None})

    get_registry().add("attribution", Made, plugin="tests")


@pytest.mark.parametrize("make, error", [
    (lambda n, p: torch.full(p.shape, float("nan")), "score .* has NaN or inf"),  # not "scores differ"
    (lambda n, p: None if "embed" in n else torch.rand(p.shape), r"scores miss 1 trainable parameters, e.g. \['model"),
    (lambda n, p: torch.rand(p.shape), "differ between two calls"),
])
def test_conformance_names_what_is_wrong(make, error, tiny):
    from harness.conformance import ConformanceError

    _scores_of(make)
    with pytest.raises(ConformanceError, match=error):
        check_attribution("made", tiny[0], tiny[1], FORGET, RETAIN)


def test_objective_conformance_catches_a_detached_loss(tiny):
    from dataclasses import dataclass

    from harness import LossOutput, Objective, mean_nll, option
    from harness.conformance import ConformanceError, check_objective

    @dataclass
    class Cfg:
        weight: float = option(1.0, "unused")

    class Detached(Objective):
        """Returns a loss without a gradient."""

        name = "detached"
        Config = Cfg

        def loss(self, model, batch, reference=None):
            return LossOutput(-mean_nll(model, batch.forget).mean().detach())

    get_registry().add("objective", Detached, plugin="tests")
    with pytest.raises(ConformanceError, match="the loss has no gradient"):
        check_objective("detached", tiny[0], tiny[1], FORGET, RETAIN)


def test_check_command_reports_conformance_and_plugin_failures(capsys):
    from harness import cli

    rmu = '{"rmu": {"layer": 1, "update": ["model.layers.1.mlp.down_proj.weight"]}}'
    assert cli.main(["-q", "check", "wagle", "rmu", "--config", rmu]) == 0
    assert "wagle: attribution conforms" in capsys.readouterr().out
    assert cli.main(["-q", "check", "rmu"]) == 1  # RMU's default layer 7 is beyond the tiny model's two
    assert "rmu: FAILED: the plugin raised ValueError: rmu layer 7" in capsys.readouterr().out
    assert cli.main(["-q", "check", "wagl"]) == 2  # an unknown name is the usual error line
    assert cli.main(["-q", "check", "rmu", "--config", "{not json"]) == 2
