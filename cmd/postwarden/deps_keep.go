package main

// Dependencies the delivery-engine work is about to use; this file goes once
// they are imported for real.
import (
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "golang.org/x/time/rate"
)
