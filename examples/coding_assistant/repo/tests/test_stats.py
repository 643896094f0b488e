import unittest

from textstats import mean, median, word_lengths


class StatsTest(unittest.TestCase):
    def test_word_lengths(self):
        self.assertEqual(word_lengths("the quick  brown fox"), [3, 5, 5, 3])

    def test_mean(self):
        self.assertEqual(mean([1, 2, 3, 4]), 2.5)
        self.assertEqual(mean([]), 0.0)

    def test_median_odd(self):
        self.assertEqual(median([5, 1, 3]), 3)

    def test_median_even(self):
        self.assertEqual(median([4, 1, 3, 2]), 2.5)


if __name__ == "__main__":
    unittest.main()
