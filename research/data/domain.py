"""The smart-home domain: devices, their parameters and the values they take.

Shared by the simulator (which writes replies) and the metrics (which read
devices and values back out of free text), so both agree on what a device is.
"""

# device -> parameter -> allowed values (None: an integer in the given range)
DEVICES: dict[str, dict[str, tuple]] = {
    "lights": {"brightness": (0, 100), "color": ("warm", "neutral", "daylight")},
    "ac": {"temperature": (16, 30), "mode": ("heat", "cool", "eco")},
    "speaker": {"volume": (0, 100), "genre": ("jazz", "classical", "rock", "pop", "lofi")},
    "tv": {"volume": (0, 100)},
    "lock": {"state": ("locked", "unlocked")},
}

NUMERIC_PARAMETERS = {"brightness", "temperature", "volume"}

TIMES_OF_DAY = ("morning", "afternoon", "evening", "night")
WEATHERS = ("sunny", "cloudy", "rainy", "snowy")
OUTDOOR_TEMPERATURE_C = (-60, 60)  # a dialogue's outdoor temperature, degrees Celsius
DAYS_OF_WEEK = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
