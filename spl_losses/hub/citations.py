"""BibTeX entries of the methods a published run used (the model card's Citation section)."""
from typing import List, Optional

__all__ = ["citations_for_loss"]

_COLE_2021 = """@inproceedings{cole2021multi,
  title     = {Multi-Label Learning from Single Positive Labels},
  author    = {Cole, Elijah and Mac Aodha, Oisin and Lorieul, Titouan and Perona, Pietro and Morris, Dan and Jojic, Nebojsa},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2021}
}"""
_ZHOU_2022 = """@inproceedings{zhou2022acknowledging,
  title     = {Acknowledging the Unknown for Multi-label Learning with Single Positive Labels},
  author    = {Zhou, Donghao and others},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2022}
}"""
_KIM_2022 = """@inproceedings{kim2022large,
  title     = {Large Loss Matters in Weakly Supervised Multi-Label Classification},
  author    = {Kim, Youngwook and Kim, Jae Myung and Akata, Zeynep and Lee, Jungwoo},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022}
}"""
_KIM_2023 = """@inproceedings{kim2023bridging,
  title     = {Bridging the Gap between Model Explanations in Partially Annotated Multi-label Classification},
  author    = {Kim, Youngwook and others},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""
_ZHANG_2021 = """@article{zhang2021simple,
  title   = {Simple and Robust Loss Design for Multi-Label Learning with Missing Labels},
  author  = {Zhang, Youcai and others},
  journal = {arXiv preprint arXiv:2112.07368},
  year    = {2021}
}"""
_RIDNIK_2021 = """@inproceedings{ridnik2021asymmetric,
  title     = {Asymmetric Loss for Multi-Label Classification},
  author    = {Ridnik, Tal and others},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021}
}"""
_CHEN_2024 = """@inproceedings{chen2024boosting,
  title     = {Boosting Single Positive Multi-label Classification with Generalized Robust Loss},
  author    = {Chen, Yanxi and others},
  booktitle = {International Joint Conference on Artificial Intelligence (IJCAI)},
  year      = {2024}
}"""
#: Loss-name prefix -> the paper of the method (Cole et al. is cited for the benchmark in every card).
_METHOD_CITATIONS = {
    "em": _ZHOU_2022, "ll_": _KIM_2022, "boostlu": _KIM_2023, "hill": _ZHANG_2021, "splc": _ZHANG_2021,
    "asl": _RIDNIK_2021, "gr": _CHEN_2024,
}


def citations_for_loss(loss: Optional[str], boostlu: bool = False) -> List[str]:
    """BibTeX entries to cite for a run: the method's paper, then Cole et al. (the SPML benchmark).

    Args:
        loss: The loss's registry name (e.g. ``"role"``, ``"em_apl"``, ``"ll_r"``).
        boostlu: Whether the run used BoostLU.
    """
    entries = []
    name = (loss or "").lower()
    for prefix, entry in _METHOD_CITATIONS.items():
        if name.startswith(prefix) and entry not in entries:
            entries.append(entry)
    if boostlu and _KIM_2023 not in entries:
        entries.append(_KIM_2023)
    entries.append(_COLE_2021)
    return entries
