"""Write 200 ARC-style multiple-choice questions in ARC's native JSONL shape, for bench/mc_speed.py.

    .venv/bin/python bench/make_arc_style.py > /tmp/arc_style.jsonl

ARC itself cannot be downloaded here, so this builds questions of the same kind (grade-school science and
arithmetic) in the shape of ARC's original release: `{"id", "question": {"stem", "choices": [{"text", "label"}]},
"answerKey"}`. What matters for the bench is what matters for acc_norm: choices of very different lengths (one
word beside a long clause), 3 to 5 choices, and labels that are sometimes 1-4 instead of A-D, as in ARC. The
output is the same on every run (seeded).
"""

import argparse
import json
import random
import sys

# Hand-written questions: (stem, right answer, distractors). Lengths vary on purpose.
WRITTEN = [
    ("Which gas do plants take in from the air to make food?", "carbon dioxide",
     ["oxygen", "nitrogen, which makes up most of the air we breathe", "helium"]),
    ("What is the main source of energy for Earth's water cycle?", "the Sun",
     ["the Moon's gravity pulling on the oceans", "wind", "heat from deep inside the planet's core"]),
    ("Which of these is a renewable resource?", "wind",
     ["coal", "natural gas that is pumped out of the ground", "oil"]),
    ("What causes day and night on Earth?", "Earth rotating on its axis",
     ["Earth orbiting the Sun once a year", "the Moon blocking the Sun", "clouds"]),
    ("Which organ pumps blood through the human body?", "the heart",
     ["the lungs", "the stomach, which also breaks down food", "the brain"]),
    ("What state of matter has a definite volume but no definite shape?", "liquid",
     ["solid", "gas", "plasma, like the matter found in stars"]),
    ("Which tool is best for measuring the mass of a rock?", "a balance",
     ["a ruler", "a thermometer that reads in degrees Celsius", "a graduated cylinder"]),
    ("What do we call an animal that eats only plants?", "a herbivore",
     ["a carnivore", "an omnivore that eats both plants and other animals", "a predator"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Venus", "Mars", "Jupiter, the largest planet"]),
    ("What happens to water when it freezes?", "it becomes a solid",
     ["it becomes a gas", "it boils", "it turns into salt and sand"]),
    ("Which part of a plant takes in water from the soil?", "the roots",
     ["the flowers", "the leaves, which make food from sunlight", "the seeds"]),
    ("A magnet will most likely attract which object?", "an iron nail",
     ["a wooden spoon", "a plastic cup", "a rubber band that is stretched between two fingers"]),
    ("Which of these is the best conductor of electricity?", "copper",
     ["glass", "rubber", "a dry piece of wood from an oak tree"]),
    ("What is the hardest natural substance?", "diamond", ["gold", "chalk", "granite, a common rock"]),
    ("Which layer of Earth do we live on?", "the crust",
     ["the inner core", "the mantle", "the outer core, which is made of liquid metal"]),
    ("Why do we see lightning before we hear thunder?", "light travels faster than sound",
     ["sound travels faster than light", "thunder happens later", "our eyes are closer to the sky than our ears"]),
    ("Which animal is a mammal?", "a whale", ["a shark", "a frog", "a salmon swimming up a river"]),
    ("What is the boiling point of water at sea level?", "100 degrees Celsius",
     ["0 degrees Celsius", "50 degrees Celsius", "212 degrees Celsius"]),
    ("Which force pulls objects toward the center of Earth?", "gravity",
     ["friction", "magnetism", "air resistance acting on a falling feather"]),
    ("What do bees collect from flowers to make honey?", "nectar",
     ["pollen only", "water", "leaves that they chew into a paste"]),
    ("Which is a chemical change?", "wood burning in a fire",
     ["ice melting", "paper being cut", "water evaporating from a puddle on a warm day"]),
    ("What is the main job of the lungs?", "to take in oxygen",
     ["to digest food", "to pump blood", "to hold up the body and protect the heart"]),
    ("Which simple machine is a ramp?", "an inclined plane",
     ["a lever", "a pulley", "a wheel and axle, like on a wagon"]),
    ("What kind of rock forms from cooled lava?", "igneous rock",
     ["sedimentary rock", "metamorphic rock", "limestone made from shells"]),
    ("Which of these is a fossil fuel?", "coal",
     ["sunlight", "wind", "water stored behind a dam in a reservoir"]),
    ("What does a thermometer measure?", "temperature",
     ["weight", "length", "the speed of the wind during a storm"]),
    ("How many legs does an insect have?", "six", ["four", "eight", "ten"]),
    ("Which unit is used to measure force?", "newton",
     ["meter", "liter", "kilogram, the unit of mass"]),
    ("What is the Moon's main effect on Earth's oceans?", "it causes tides",
     ["it causes waves to freeze", "it makes the water salty", "it heats the water"]),
    ("Which is an example of an inherited trait?", "eye color",
     ["a scar", "speaking French", "knowing how to ride a bicycle"]),
    ("Where does digestion of food begin?", "in the mouth",
     ["in the stomach", "in the large intestine, near the end", "in the liver"]),
    ("What is the closest star to Earth?", "the Sun", ["Polaris", "Sirius", "the North Star, Polaris"]),
    ("Which material is attracted to a magnet?", "steel", ["aluminum foil", "paper", "copper wire"]),
    ("What do seeds need to start growing?", "water and warmth",
     ["darkness only", "salt", "a lot of wind blowing across the field"]),
    ("Which of these animals lays eggs?", "a chicken", ["a cow", "a dog", "a horse"]),
    ("What is the best way to save water at home?", "turn off the tap while brushing teeth",
     ["take longer showers", "water the lawn at noon", "leave the hose running"]),
    ("Which part of the cell controls its activities?", "the nucleus",
     ["the cell wall", "the cytoplasm, a jelly-like fluid", "the vacuole"]),
    ("What kind of energy does a moving car have?", "kinetic energy",
     ["chemical energy only", "nuclear energy", "sound energy"]),
    ("Which season has the longest days in the Northern Hemisphere?", "summer",
     ["winter", "autumn, when the leaves fall", "spring"]),
    ("What happens to most metals when they are heated?", "they expand",
     ["they shrink", "they turn into gas at once", "they become magnetic"]),
]

# Templated questions: category membership, where the right answer's length varies with the pick.
CATEGORIES = {
    "mammal": ["dog", "whale", "bat", "horse", "elephant", "mouse", "dolphin", "cow"],
    "bird": ["eagle", "penguin", "sparrow", "owl", "robin", "ostrich", "parrot"],
    "fish": ["salmon", "trout", "shark", "tuna", "goldfish", "cod"],
    "reptile": ["snake", "lizard", "turtle", "crocodile", "iguana"],
    "metal": ["iron", "copper", "gold", "silver", "aluminum", "zinc"],
    "planet": ["Mars", "Venus", "Saturn", "Jupiter", "Neptune", "Mercury"],
    "liquid at room temperature": ["water", "milk", "vinegar", "juice", "oil"],
    "gas at room temperature": ["oxygen", "helium", "nitrogen", "steam"],
}
ANIMALS = ("mammal", "bird", "fish", "reptile")
DESCRIPTIONS = ["{}", "the {}", "the {}, which lives far away", "a small {}", "the common {} seen in many places"]
STEMS = ["Which of these is {article} {kind}?", "Which one is {article} {kind}?",
         "A student lists some things. Which one is {article} {kind}?"]
ARITHMETIC = [
    ("{name} has {a} apples and picks {b} more. How many apples does {name} have now?", lambda a, b: a + b),
    ("A class has {a} students. {b} go home early. How many students are left?", lambda a, b: a - b),
    ("There are {a} boxes with {b} pencils in each. How many pencils are there in all?", lambda a, b: a * b),
]
NAMES = ["Maria", "Sam", "Ana", "Leo", "Priya", "Tom"]


def membership_question(rng: random.Random) -> tuple[str, str, list[str]]:
    kind = rng.choice(list(CATEGORIES))
    right = rng.choice(CATEGORIES[kind])
    others = [w for k, words in CATEGORIES.items() if k != kind for w in words]
    wrong = rng.sample(others, 4)
    # Only animals get descriptions ("the owl, which lives far away"), so the texts stay sensible.
    describe = lambda word: rng.choice(DESCRIPTIONS).format(word) if kind in ANIMALS and word in animals else word
    animals = {w for k in ANIMALS for w in CATEGORIES[k]}
    article = "an" if kind[0] in "aeiou" else "a"
    stem = rng.choice(STEMS).format(article=article, kind=kind)
    return stem, describe(right), [describe(w) for w in wrong]


def arithmetic_question(rng: random.Random) -> tuple[str, str, list[str]]:
    template, answer_of = rng.choice(ARITHMETIC)
    a, b = rng.randint(6, 20), rng.randint(2, 5)
    answer = answer_of(a, b)
    wrong = sorted({answer + 1, answer - 1, answer + b, a, b} - {answer})
    texts = [str(n) if rng.random() < 0.6 else f"{n} in total" for n in rng.sample(wrong, 3)]
    return template.format(name=rng.choice(NAMES), a=a, b=b), str(answer), texts


def arc_record(index: int, stem: str, right: str, wrong: list[str], rng: random.Random) -> dict:
    """One question in ARC's native shape, choices shuffled, labels A-D or (one in five) 1-4."""
    texts = [right] + wrong[:rng.choice([2, 3, 3, 3, 4])] if len(wrong) >= 4 else [right] + wrong
    rng.shuffle(texts)
    labels = [str(i + 1) for i in range(len(texts))] if rng.random() < 0.2 else [chr(65 + i) for i in range(len(texts))]
    return {"id": f"ARCStyle_{index:04d}",
            "question": {"stem": stem, "choices": [{"text": t, "label": l} for t, l in zip(texts, labels)]},
            "answerKey": labels[texts.index(right)]}


def questions(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    made = list(WRITTEN)
    while len(made) < count:
        made.append(membership_question(rng) if rng.random() < 0.6 else arithmetic_question(rng))
    return [arc_record(i, *q, rng) for i, q in enumerate(made[:count])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for record in questions(args.count, args.seed):
        sys.stdout.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
