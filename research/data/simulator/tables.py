"""The simulator's tables: archetypes, names, pet phrases, what users say and how
replies are worded. Data only; the code that draws from them is in the sibling modules."""

NAMES = (
    "Ethan Maya Liam Sofia Noah Ava Lucas Chloe Mateo Zara Omar Priya Kenji Lena Felix Nora "
    "Diego Amara Hugo Ingrid Ravi Yuki Tomas Elif Kofi Mila Arjun Sienna Malik Freya Jonas Aiko "
    "Dante Leila Oscar Wren Idris Clara Theo Hana Bruno Esme Soren Tala Rafael Nia Emil Ines"
).split()

ARCHETYPES = {
    "cozy_homebody": dict(
        brightness=40,
        color="warm",
        temperature=23,
        speaker_volume=25,
        tv_volume=20,
        genre="jazz",
        verbosity=0.7,
        formality=0.4,
        enthusiasm=0.5,
        adjectives=("gentle", "warm-hearted", "easygoing"),
        occupations=("baker", "florist", "children's author"),
        hobbies=("loves knitting by the window", "bakes bread every weekend"),
    ),
    "energetic_athlete": dict(
        brightness=90,
        color="daylight",
        temperature=19,
        speaker_volume=70,
        tv_volume=35,
        genre="pop",
        verbosity=0.4,
        formality=0.2,
        enthusiasm=0.9,
        adjectives=("lively", "upbeat", "sporty"),
        occupations=("yoga instructor", "personal trainer", "cycling coach"),
        hobbies=("runs every morning before sunrise", "is always training for a marathon"),
    ),
    "quiet_scholar": dict(
        brightness=60,
        color="neutral",
        temperature=21,
        speaker_volume=15,
        tv_volume=15,
        genre="classical",
        verbosity=0.3,
        formality=0.9,
        enthusiasm=0.2,
        adjectives=("reserved", "thoughtful", "soft-spoken"),
        occupations=("librarian", "historian", "translator"),
        hobbies=("reads mystery novels late into the night", "collects old maps"),
    ),
    "busy_professional": dict(
        brightness=80,
        color="neutral",
        temperature=22,
        speaker_volume=40,
        tv_volume=30,
        genre="lofi",
        verbosity=0.1,
        formality=0.6,
        enthusiasm=0.3,
        adjectives=("pragmatic", "efficient", "no-nonsense"),
        occupations=("engineer", "lawyer", "project manager"),
        hobbies=("works long hours", "plans every minute of the week"),
    ),
    "night_owl_creative": dict(
        brightness=30,
        color="warm",
        temperature=20,
        speaker_volume=55,
        tv_volume=40,
        genre="rock",
        verbosity=0.6,
        formality=0.1,
        enthusiasm=0.7,
        adjectives=("playful", "dreamy", "spontaneous"),
        occupations=("musician", "illustrator", "game designer"),
        hobbies=("paints until dawn", "plays guitar in a garage band"),
    ),
}
ARCHETYPE_WEIGHTS = (0.25, 0.2, 0.2, 0.2, 0.15)

PET_PHRASES = (
    "if you would be so kind",
    "no rush",
    "cheers",
    "awesome",
    "thanks a bunch",
    "pretty please",
    "right away",
    "you're a star",
    "much obliged",
    "let's go",
)
STYLE_SENTENCES = {
    "terse": "speaks in short, clipped sentences.",
    "chatty": "likes to chat and explain things at length.",
    "formal": "is always polite and rather formal.",
    "casual": "keeps things casual and relaxed.",
}


INTENTS = ("lights_on", "lights_set", "climate", "music", "tv", "movie", "goodnight", "lock", "cozy")
INTENT_WEIGHTS = (0.2, 0.1, 0.15, 0.12, 0.1, 0.08, 0.08, 0.07, 0.1)

USER_TEXT = {
    "lights_on": (
        "Could you turn on the lights?",
        "lights on",
        "Can you get the lights?",
        "It's quite dim in here, turn on the lamp.",
    ),
    "lights_set": ("Set the lights to {value} percent.", "lights at {value}%", "Could you dim the lights to {value}%?"),
    "climate": (
        "It's a bit {feel} in here.",
        "Turn on the AC.",
        "Can you fix the temperature? I'm {feel}.",
        "thermostat please",
    ),
    "music": ("Play some music.", "Put on some tunes.", "Could you start the music?"),
    "tv": ("Turn on the TV.", "tv on", "Could you switch on the television?"),
    "movie": ("Set up movie mode.", "movie time", "Get the room ready for a film."),
    "goodnight": ("Good night.", "I'm going to bed.", "night mode please"),
    "lock": ("Lock the front door.", "Is the door locked? Lock it.", "lock up"),
    "cozy": ("Make it cozy in here.", "I want the place cozy.", "cozy mode"),
}
FOLLOW_UP_PARAMETER = {
    "brighter": "brightness",
    "dimmer": "brightness",
    "warmer": "temperature",
    "louder": "volume",
    "quieter": "volume",
}
FOLLOW_UP_STEP = {"brighter": 20, "dimmer": -20, "warmer": 1, "louder": 10, "quieter": -10}
FOLLOW_UP_TEXT = {
    "brighter": "A bit brighter, please.",
    "dimmer": "Too bright, dim it.",
    "warmer": "Make it a little warmer.",
    "louder": "Turn it up.",
    "quieter": "Turn it down a bit.",
    "thanks": "Thanks!",
}


PHRASES = {
    ("lights", "brightness"): ("the lights to {v}% brightness", "lights at {v}%", "the lights to {v} percent"),
    ("lights", "color"): ("a {v} color", "{v} light", "a {v} tone"),
    ("ac", "temperature"): ("the AC to {v} degrees", "the thermostat to {v}°C", "the temperature to {v} degrees"),
    ("ac", "mode"): ("the AC on {v} mode", "{v} mode on the air conditioner", "the AC to {v}"),
    ("speaker", "volume"): ("the speaker volume to {v}", "music at volume {v}", "the speaker to {v}%"),
    ("speaker", "genre"): ("some {v} music", "your {v} playlist", "{v} on the speaker"),
    ("tv", "volume"): ("the TV volume to {v}", "the TV at volume {v}", "the television to {v}"),
    ("lock", "state"): ("the front door {v}", "the door lock to {v}", "the door {v}"),
}
VERBS = ("Setting", "I've set", "Okay, setting", "Putting")
GREETINGS_FORMAL = ("Certainly.", "Of course.", "Very well.")
GREETINGS_CASUAL = ("Sure thing!", "You got it!", "On it!")
CLOSINGS = ("Let me know if you'd like anything else.", "Is there anything else you need?", "Enjoy your evening.")
