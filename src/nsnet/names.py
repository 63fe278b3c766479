"""Docker-style random sandbox names: adjective_surname."""
import random

_LEFT = ("admiring adoring agitated amazing angry awesome blissful bold boring brave busy charming clever "
         "compassionate competent confident cool cranky crazy dazzling determined distracted dreamy eager "
         "ecstatic elastic elated elegant eloquent epic festive flamboyant focused friendly frosty funny gallant "
         "gifted goofy gracious happy hardcore heuristic hopeful hungry infallible inspiring intelligent jolly "
         "jovial keen kind laughing loving lucid magical modest musing mystifying naughty nervous nice nifty "
         "nostalgic objective optimistic peaceful pedantic pensive practical priceless quirky quizzical relaxed "
         "reverent romantic sad serene sharp silly sleepy stoic strange stupefied suspicious sweet tender "
         "thirsty trusting unruffled upbeat vibrant vigilant vigorous wizardly wonderful xenodochial youthful "
         "zealous zen").split()
_RIGHT = ("agnesi albattani allen archimedes babbage banach bardeen bartik bell benz bhabha blackwell bohr "
          "booth borg bose brahmagupta brattain brown cannon carson cerf chandrasekhar clarke cohen curie "
          "darwin davinci dijkstra dirac easley einstein elion engelbart euclid euler faraday fermat fermi "
          "feynman franklin galileo gates germain goldberg goodall hamilton hawking heisenberg hertz hopper "
          "hypatia jackson jang jepsen johnson kalam kepler khorana knuth lamarr lamport leakey lovelace "
          "lumiere mayer mccarthy mcclintock meitner mendel minsky mirzakhani montalcini moore morse napier "
          "newton nobel noether pascal pasteur perlman pike poincare ptolemy raman ride ritchie rubin saha "
          "shannon shaw shockley sinoussi snyder stonebraker swanson tesla thompson torvalds turing villani "
          "wescoff wiles williams wilson wing wozniak wright yalow yonath").split()


def random_name() -> str:
    return f"{random.choice(_LEFT)}_{random.choice(_RIGHT)}"
