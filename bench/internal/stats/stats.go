// Package stats holds what the benchmark tools share to summarise
// latencies and print their one-line JSON results.
package stats

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Pct returns the nearest-rank percentile p (0 to 1) of sorted d, in
// microseconds rounded to 0.1.
func Pct(d []time.Duration, p float64) float64 {
	idx := int(math.Ceil(p*float64(len(d)))) - 1
	idx = max(0, min(idx, len(d)-1))
	return Micros(d[idx])
}

// Micros returns d in microseconds rounded to 0.1.
func Micros(d time.Duration) float64 { return Round1(float64(d) / 1e3) }

// Round1 rounds f to one decimal.
func Round1(f float64) float64 { return math.Round(f*10) / 10 }

// PrintJSON prints v as one JSON line on standard output.
func PrintJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}
