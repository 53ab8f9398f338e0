"""`medmoe seg classes`: the class template, what `medmoe seg predict --prompt` accepts."""

from __future__ import annotations

import argparse
import json

from medmoe.cli.arguments import add_command


def add_classes_command(sub: argparse._SubParsersAction) -> None:
    """Register ``classes`` on the ``medmoe seg`` group."""
    classes = add_command(sub, "classes", run_classes, epilog="examples:\n  medmoe seg classes\n  medmoe seg classes --dataset BTCV\n"
               "  medmoe seg classes --model runs/mome/model --json")
    classes.add_argument("--dataset", default=None, metavar="NAME",
                         help="only this dataset's label map (label id -> class); names and aliases resolve")
    classes.add_argument("--model", default=None, metavar="DIR",
                         help="only the classes of this saved model (what --prompt all segments)")
    classes.add_argument("--json", action="store_true", help="print JSON instead of a table")



def run_classes(args: argparse.Namespace) -> int:
    """list the class template: names, prompts, synonyms, datasets that label each class

    The classes `medmoe seg predict --prompt` accepts (names, synonyms and small typos
    resolve), with the datasets that label each; or one dataset's label map.
    """
    from medmoe.saved_model import read_model_config
    from medmoe.seg.classes import ClassTemplate
    from medmoe.seg.prompts import model_class_names

    template = ClassTemplate.default()
    if args.dataset:
        name = template.dataset_name(args.dataset)
        labels = template.label_map(name)
        labelled = template.labelled_classes(name)
        derived = [c for c in labelled if c not in labels.values()]
        if args.json:
            print(json.dumps({"dataset": name, "labels": {str(k): v for k, v in labels.items()},
                              "labelled_classes": labelled}, indent=2))
            return 0
        print(f"{name}: label id -> class")
        for label_id, cls in labels.items():
            print(f"{label_id:5d}  {cls}")
        if derived:
            print(f"also labelled (unions of labelled parts): {', '.join(derived)}")
        return 0
    names, source = list(template.names), "every class of the class template"
    if args.model:
        _, fields = read_model_config(args.model)
        names, source = model_class_names(fields, template)
    labelled = {dataset: set(template.labelled_classes(dataset)) for dataset in template.datasets}
    rows = [{"name": n, "display": info.display, "prompt": template.prompt(n), "kind": info.kind,
             "parent": info.parent, "parts": list(info.parts), "synonyms": list(info.synonyms),
             "datasets": [d for d in template.datasets if n in labelled[d]]}
            for n, info in ((n, template.info(n)) for n in names)]
    if args.json:
        print(json.dumps({"source": source, "prompt_template": template.prompt_template, "classes": rows}, indent=2))
        return 0
    print(f"{len(rows)} classes ({source}); prompt: {template.prompt_template!r}. Names, display names, synonyms "
          "and small typos resolve.")
    print(f"{'class':30s} {'kind':7s} other names; datasets that label it")
    for row in rows:
        others = [row["display"]] if row["display"] != row["name"].replace("_", " ") else []
        others += row["synonyms"]
        labelled = f"labelled by {', '.join(row['datasets'])}" if row["datasets"] else "labelled by no dataset"
        print(f"{row['name']:30s} {row['kind']:7s} {', '.join(others) + '; ' if others else ''}{labelled}")
    print(f"datasets: {', '.join(template.datasets)} (label maps: medmoe seg classes --dataset NAME)")
    return 0
