"""The loss registry: list / create / unknown names / registration / entry-point plugins."""
import sys
import textwrap

import pytest
import torch
from torch import nn

import spl_losses
from spl_losses import _registry, create_loss, get_loss_class, is_loss, list_losses, register_loss

CORE = ["an", "an_ls", "bce", "bce_ls", "epr", "iu", "role", "wan"]


@pytest.fixture
def isolated_registry(monkeypatch):
    """A copy of the registry that the test may change; entry points are scanned again."""
    monkeypatch.setattr(_registry, "_loss_entrypoints", dict(_registry._loss_entrypoints))
    monkeypatch.setattr(_registry, "_entry_points_loaded", False)
    return _registry


def test_list_losses_is_sorted_and_holds_the_core_losses():
    names = list_losses()
    assert names == sorted(names)
    assert set(CORE) <= set(names)


def test_list_losses_filter():
    assert list_losses("an*") == ["an", "an_ls"]
    assert list_losses("*_ls") == [n for n in list_losses() if n.endswith("_ls")]
    assert set(list_losses(["bce", "role"])) == {"bce", "role"}
    assert list_losses("no_such_*") == []


def test_create_loss_returns_a_module_with_its_name():
    loss = create_loss("an")
    assert isinstance(loss, nn.Module)
    assert loss.loss_name == "an"
    assert type(loss) is get_loss_class("an")
    wan = create_loss("wan", num_classes=5, stable=True)
    assert wan.num_classes == 5 and wan.stable
    assert is_loss("role") and not is_loss("rolee")


def test_exports_from_package_root():
    for name in ("register_loss", "create_loss", "list_losses"):
        assert getattr(spl_losses, name) is getattr(_registry, name)


def test_unknown_name_lists_known_names_and_closest_match():
    with pytest.raises(ValueError) as info:
        create_loss("an_lss")
    message = str(info.value)
    assert "'an_lss'" in message
    assert "Did you mean 'an_ls'?" in message
    for name in CORE:
        assert name in message


def test_unknown_name_without_close_match_still_lists_names():
    with pytest.raises(ValueError, match="Known losses: .*role"):
        get_loss_class("zzzzzzzz")


def test_register_loss(isolated_registry):
    @register_loss("toy_registered")
    class ToyLoss(nn.Module):
        def forward(self, logits, targets):
            return logits.sum() * 0

    assert "toy_registered" in list_losses()
    assert isinstance(create_loss("toy_registered"), ToyLoss)
    assert ToyLoss.loss_name == "toy_registered"
    # registering the same class again is harmless, another class under the name is an error
    register_loss("toy_registered")(ToyLoss)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("toy_registered")(type("Other", (nn.Module,), {}))
    with pytest.raises(TypeError, match="string"):
        register_loss("")
    with pytest.raises(TypeError, match="string"):
        register_loss(3)


def _write_distribution(root, dist_name, module_name, module_source, entry_points):
    (root / f"{module_name}.py").write_text(textwrap.dedent(module_source))
    dist_info = root / f"{dist_name}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[{_registry.ENTRY_POINT_GROUP}]\n{lines}\n")


def test_entry_point_plugin_loss(tmp_path, monkeypatch, isolated_registry):
    module = "spl_toy_plugin_mod"
    _write_distribution(tmp_path, "spl_toy_plugin", module, """
        import torch
        from spl_losses import SPLoss

        class HalfAssumeNegative(SPLoss):
            def compute(self, logits, targets, index=None):
                return 0.5 * torch.nn.functional.softplus(-logits).mean()
        """, {"toy_plugin_loss": f"{module}:HalfAssumeNegative"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)

    assert "toy_plugin_loss" in list_losses()
    assert list_losses("toy_plugin*") == ["toy_plugin_loss"]
    loss = create_loss("toy_plugin_loss")
    assert type(loss).__module__ == module
    assert loss.loss_name == "toy_plugin_loss"
    value = loss(torch.zeros(2, 3), torch.zeros(2, 3))
    assert value.item() == pytest.approx(0.5 * torch.log(torch.tensor(2.0)).item(), rel=1e-6)


def test_broken_entry_point_warns_and_does_not_break_the_registry(tmp_path, monkeypatch, isolated_registry):
    module = "spl_broken_plugin_mod"
    _write_distribution(tmp_path, "spl_broken_plugin", module, "X = 1\n",
                        {"broken_plugin_loss": f"{module}:DoesNotExist"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.warns(UserWarning, match="broken_plugin_loss"):
        names = list_losses()
    assert "broken_plugin_loss" not in names
    assert set(CORE) <= set(names)


# ----------------------------------------------------------------------------- constructor arguments
def test_loss_parameters_follow_kwargs_up_the_classes():
    assert spl_losses.loss_parameters is _registry.loss_parameters
    # epr's **kwargs reach SPLoss; hill's constructor takes no **kwargs, so SPLoss's eps is not offered
    assert _registry.loss_parameters("epr") == {"expected_num_pos", "num_classes", "eps", "stable", "check_inputs"}
    assert _registry.loss_parameters("hill") == {"lamb", "margin", "gamma", "reduction", "num_classes",
                                                 "check_inputs"}


def test_loss_kwargs_keeps_what_the_loss_takes_and_refuses_unknown_options():
    available = {"num_classes": 5, "num_examples": 10, "eps": 1e-5, "observed_labels": None}
    assert _registry.loss_kwargs("hill", available, {"gamma": 1.0}) == {"num_classes": 5, "gamma": 1.0}
    assert _registry.loss_kwargs("an", available) == {"eps": 1e-5}
    # an option overrides an available value; None values on offer are dropped
    assert _registry.loss_kwargs("wan", available, {"num_classes": 7}) == {"num_classes": 7, "eps": 1e-5}
    with pytest.raises(ValueError, match=r"loss 'hill' does not take option\(s\) \['alpha'\]; it takes \['check_inputs'"):
        _registry.loss_kwargs("hill", available, {"alpha": 0.1})


def test_create_loss_with_label_estimation_routes_arguments():
    common = dict(num_classes=4, num_examples=10, expected_num_pos=1.0, seed=0)
    loss = create_loss("em", label_estimation=True, alpha=0.2, eps=1e-6, **common)
    assert loss.base_loss.alpha == 0.2 and loss.base_loss.num_classes == 4 and loss.base_loss.eps == 1e-6
    assert loss.eps == 1e-6 and loss.num_examples == 10
    with pytest.raises(ValueError, match=r"loss 'hill' does not take option\(s\) \['alpha'\]"):
        create_loss("hill", label_estimation=True, alpha=0.2, **common)


# ------------------------------------------------------------------------------------------ citations
def test_every_registered_loss_cites_its_paper():
    for name in list_losses():
        cls = get_loss_class(name)
        assert cls.citation.lstrip().startswith("@") and cls.citation.rstrip().endswith("}"), name
        assert cls.paper, name
    cole = {"an", "an_ls", "bce", "bce_ls", "epr", "iu", "role", "wan", "label_estimation"}
    for name in cole:
        assert "Multi-Label Learning from Single Positive Labels" in get_loss_class(name).citation
    assert "Large Loss Matters" in get_loss_class("ll_cp").citation
    assert "Asymmetric Loss" in get_loss_class("asl").citation
    assert "Bridging the Gap" in spl_losses.BoostLU.citation
