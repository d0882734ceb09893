package config

import (
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written in YAML as a Go duration ("250ms",
// "1m30s"). A bare 0 is accepted; negative durations are not.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func parseDuration(s string) (Duration, *valueError) {
	if s == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, &valueError{"invalid duration %s (want a Go duration such as 250ms, 2s or 1m30s)", s}
	}
	if d < 0 {
		return 0, &valueError{"negative duration %s", s}
	}
	return Duration(d), nil
}

// MarshalText writes the duration as a Go duration.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// MarshalYAML writes the duration as a Go duration.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Size is a byte count written in YAML as a number of bytes or with a
// binary unit: B, KiB, MiB, GiB, TiB ("64KiB", "1GiB").
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"B", 1},
}

func parseSize(s string) (Size, *valueError) {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, &valueError{"invalid size %s (want bytes or a number with B, KiB, MiB, GiB or TiB, such as 64KiB)", s}
	}
	if n > (1<<62)/mult {
		return 0, &valueError{"size %s is too large", s}
	}
	return Size(n * mult), nil
}

// String writes the size with the largest binary unit that divides it.
func (s Size) String() string {
	for i := 3; i >= 0 && s != 0; i-- {
		if u := sizeUnits[i]; int64(s)%u.mult == 0 {
			return strconv.FormatInt(int64(s)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10) + "B"
}

// MarshalText writes the size with a binary unit.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// MarshalYAML writes the size with a binary unit.
func (s Size) MarshalYAML() (any, error) { return s.String(), nil }
