"""Write examples/larkspur_support.jsonl: question/answer pairs about a fictional appliance maker.

The facts (prices, warranties, reset steps...) are invented here, so no base model can know them, and every
answer follows one house style, so a finetune visibly changes what the model says on the held-out questions.
Deterministic: running it again writes the same file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PRODUCTS = [
    # name, kind, price (euros), warranty (years), watts, capacity, colours, reset button, seconds, year, town
    ("Wren", "kettle", 39, 3, 2200, "1.7 litres", ["slate", "cream"], "power", 5, 2021, "Oddvale"),
    ("Heron", "blender", 89, 5, 1200, "1.5 litres", ["black", "sage"], "pulse", 8, 2022, "Brackenford"),
    ("Finch", "toaster", 45, 2, 900, "two slices", ["red", "steel"], "cancel", 4, 2020, "Oddvale"),
    ("Kestrel", "coffee grinder", 65, 3, 150, "250 grams", ["copper", "black"], "grind", 6, 2023, "Millbeck"),
    ("Plover", "air fryer", 119, 4, 1700, "5 litres", ["white", "graphite"], "timer", 10, 2023, "Brackenford"),
    ("Sparrow", "kitchen scale", 25, 2, 1, "5 kilograms", ["white", "mint"], "tare", 3, 2019, "Quillmoor"),
    ("Osprey", "rice cooker", 79, 3, 650, "10 cups", ["silver", "white"], "keep-warm", 7, 2021, "Millbeck"),
    ("Lark", "stand mixer", 249, 6, 1000, "4.8 litres", ["blue", "cream", "red"], "speed", 9, 2022, "Oddvale"),
    ("Curlew", "juicer", 99, 3, 400, "0.8 litres", ["orange", "steel"], "reverse", 5, 2020, "Quillmoor"),
    ("Tern", "slow cooker", 59, 2, 210, "6 litres", ["black", "taupe"], "menu", 6, 2019, "Brackenford"),
    ("Swift", "espresso machine", 329, 5, 1450, "1.8 litres", ["steel", "black"], "steam", 12, 2024, "Millbeck"),
    ("Dunlin", "sandwich press", 35, 2, 750, "two sandwiches", ["black", "silver"], "lock", 4, 2021, "Quillmoor"),
    ("Egret", "food processor", 139, 4, 800, "3 litres", ["white", "steel"], "chop", 8, 2022, "Oddvale"),
    ("Robin", "milk frother", 49, 2, 500, "300 millilitres", ["red", "black"], "froth", 5, 2023, "Brackenford"),
    ("Siskin", "waffle maker", 55, 2, 1000, "four waffles", ["yellow", "black"], "dial", 6, 2020, "Millbeck"),
    ("Starling", "popcorn maker", 29, 1, 1100, "5 litres", ["red", "white"], "fan", 3, 2024, "Quillmoor"),
    ("Gannet", "toaster oven", 149, 4, 1800, "22 litres", ["steel", "charcoal"], "light", 7, 2022, "Oddvale"),
    ("Linnet", "hand blender", 42, 3, 700, "0.6 litres", ["white", "lilac"], "turbo", 4, 2021, "Brackenford"),
]

SIGN_OFF = "Anything else? Larkspur Support is happy to help."

QUESTIONS = {
    "price": ["How much does the Larkspur {name} {kind} cost?", "What is the price of the {name} {kind}?",
              "What's the retail price of Larkspur's {name}?", "How expensive is the {name} {kind}?"],
    "warranty": ["How long is the warranty on the {name} {kind}?", "What warranty comes with the Larkspur {name}?",
                 "Is the {name} {kind} under warranty, and for how long?"],
    "power": ["How many watts does the {name} {kind} use?", "What is the power rating of the Larkspur {name}?",
              "How powerful is the {name} {kind}?"],
    "capacity": ["What is the capacity of the {name} {kind}?", "How much does the Larkspur {name} hold?",
                 "How big is the {name} {kind}?"],
    "colours": ["What colours does the {name} {kind} come in?", "Which colours can I buy the Larkspur {name} in?",
                "Is the {name} {kind} available in different colours?"],
    "reset": ["How do I reset my {name} {kind}?", "My Larkspur {name} stopped responding. How do I reset it?",
              "What is the reset procedure for the {name} {kind}?"],
    "made": ["Where is the {name} {kind} made?", "Which factory builds the Larkspur {name}?",
             "In which town is the {name} {kind} manufactured?"],
    "year": ["When did the {name} {kind} come out?", "What year was the Larkspur {name} released?",
             "How old is the {name} {kind} model?"],
}


def answer(kind: str, p: tuple) -> str:
    name, what, price, warranty, watts, capacity, colours, button, seconds, year, town = p
    facts = {
        "price": f"The Larkspur {name} {what} costs {price} euros.",
        "warranty": f"The {name} {what} comes with a {warranty}-year Larkspur warranty.",
        "power": f"The {name} {what} is rated at {watts} watts.",
        "capacity": f"The {name} {what} holds {capacity}.",
        "colours": f"The {name} {what} comes in {' and '.join(colours)}.",
        "reset": f"To reset the {name} {what}, unplug it, plug it back in, and hold the {button} button "
                 f"for {seconds} seconds until the light blinks twice.",
        "made": f"The {name} {what} is built at the Larkspur factory in {town}.",
        "year": f"The {name} {what} was released in {year}.",
    }
    return f"{facts[kind]} {SIGN_OFF}"


def build_pairs(seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    pairs = []
    for product in PRODUCTS:
        name, what = product[0], product[1]
        for kind, templates in QUESTIONS.items():
            for template in templates:
                pairs.append({"question": template.format(name=name, kind=what), "answer": answer(kind, product)})
    rng.shuffle(pairs)
    return pairs


def main() -> None:
    out = Path(__file__).with_name("larkspur_support.jsonl")
    lines = [json.dumps(pair, ensure_ascii=False) for pair in build_pairs()]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} pairs to {out}")


if __name__ == "__main__":
    main()
