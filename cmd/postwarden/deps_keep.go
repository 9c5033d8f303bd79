package main

// Kept until the browser tests import chromedp for real.
import _ "github.com/chromedp/chromedp"
