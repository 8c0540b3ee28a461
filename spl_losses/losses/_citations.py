"""BibTeX entries of the papers whose methods the package implements.

Each loss class (and :class:`~spl_losses.models.BoostLU`) carries its paper's entry as the class
attribute ``citation`` and a short human name as ``paper``; model cards and users read them there.
"""

__all__ = ["COLE_2021", "ZHOU_2022", "KIM_2022", "KIM_2023", "ZHANG_2021", "RIDNIK_2021", "CHEN_2024",
           "CHEN_2020", "KHOSLA_2020", "XING_2024", "TRAN_2025"]

COLE_2021 = """@inproceedings{cole2021multi,
  title     = {Multi-Label Learning from Single Positive Labels},
  author    = {Cole, Elijah and Mac Aodha, Oisin and Lorieul, Titouan and Perona, Pietro and Morris, Dan and Jojic, Nebojsa},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2021}
}"""

ZHOU_2022 = """@inproceedings{zhou2022acknowledging,
  title     = {Acknowledging the Unknown for Multi-label Learning with Single Positive Labels},
  author    = {Zhou, Donghao and Chen, Pengfei and Wang, Qiong and Chen, Guangyong and Heng, Pheng-Ann},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2022}
}"""

KIM_2022 = """@inproceedings{kim2022large,
  title     = {Large Loss Matters in Weakly Supervised Multi-Label Classification},
  author    = {Kim, Youngwook and Kim, Jae Myung and Akata, Zeynep and Lee, Jungwoo},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022}
}"""

KIM_2023 = """@inproceedings{kim2023bridging,
  title     = {Bridging the Gap between Model Explanations in Partially Annotated Multi-label Classification},
  author    = {Kim, Youngwook and Kim, Jae Myung and Jeong, Jieun and Schmid, Cordelia and Akata, Zeynep and Lee, Jungwoo},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""

ZHANG_2021 = """@article{zhang2021simple,
  title   = {Simple and Robust Loss Design for Multi-Label Learning with Missing Labels},
  author  = {Zhang, Youcai and Cheng, Yuhao and Huang, Xinyu and Wen, Fei and Feng, Rui and Li, Yaqian and Guo, Yandong},
  journal = {arXiv preprint arXiv:2112.07368},
  year    = {2021}
}"""

RIDNIK_2021 = """@inproceedings{ridnik2021asymmetric,
  title     = {Asymmetric Loss for Multi-Label Classification},
  author    = {Ridnik, Tal and Ben-Baruch, Emanuel and Zamir, Nadav and Noy, Asaf and Friedman, Itamar and Protter, Matan and Zelnik-Manor, Lihi},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021}
}"""

CHEN_2024 = """@inproceedings{chen2024boosting,
  title     = {Boosting Single Positive Multi-label Classification with Generalized Robust Loss},
  author    = {Chen, Yanxi and Li, Chunxiao and Dai, Xinyang and Li, Jinhuan and Sun, Weiyu and Wang, Yiming and Zhang, Renyuan and Zhang, Tinghe and Wang, Bo},
  booktitle = {International Joint Conference on Artificial Intelligence (IJCAI)},
  year      = {2024}
}"""

CHEN_2020 = """@inproceedings{chen2020simple,
  title     = {A Simple Framework for Contrastive Learning of Visual Representations},
  author    = {Chen, Ting and Kornblith, Simon and Norouzi, Mohammad and Hinton, Geoffrey},
  booktitle = {International Conference on Machine Learning (ICML)},
  year      = {2020}
}"""

KHOSLA_2020 = """@inproceedings{khosla2020supervised,
  title     = {Supervised Contrastive Learning},
  author    = {Khosla, Prannay and Teterwak, Piotr and Wang, Chen and Sarna, Aaron and Tian, Yonglong and Isola, Phillip and Maschinot, Aaron and Liu, Ce and Krishnan, Dilip},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2020}
}"""

XING_2024 = """@inproceedings{xing2024vision,
  title     = {Vision-Language Pseudo-Labels for Single-Positive Multi-Label Learning},
  author    = {Xing, Xin and Xiong, Zhexiao and Stylianou, Abby and Sastry, Srikumar and Gong, Liyu and Jacobs, Nathan},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition Workshops (CVPRW)},
  year      = {2024}
}"""

TRAN_2025 = """@inproceedings{tran2025more,
  title     = {More Reliable Pseudo-labels, Better Performance: A Generalized Approach to Single Positive Multi-label Learning},
  author    = {Tran, Luong and Vo, Thieu and Nguyen, Anh and Dinh, Sang and Nguyen, Van},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2025}
}"""
