package main

import (
	"bytes"
	"cmp"
	"fmt"
	"math"
	"text/template"
)

// The one chart renderer: panels side by side, each with one line per
// series, a logarithmic y axis shared by every panel, and an x axis
// either logarithmic (shared too) or of categories.

// chart is what render draws.
type chart struct {
	Title          string
	XLabel, YLabel string
	PanelW         float64
	XLog           bool     // x values on a log scale; else XCats
	XCats          []string // category names; a point's x is its index
	Panels         []panel
}

type panel struct {
	Title  string
	Series []series
	Empty  string // shown when no series has a point; "not measured" when ""
}

// series is one line; a label keeps one color across panels.
type series struct {
	Label  string
	Legend string // the legend's text; the label when ""
	Width  float64
	Dash   string
	Points []chartPoint // data values
}

// render lays the chart out and draws it as SVG.
func (c chart) render() ([]byte, error) {
	const panelH, left, top, gap = 300.0, 70.0, 60.0, 90.0
	xs, ys := c.ranges()
	d := chartData{Title: c.Title}
	colors := map[string]string{}
	for i, cp := range c.Panels {
		p := chartPanel{Title: cp.Title, X: left + float64(i)*(c.PanelW+gap), Y: top, W: c.PanelW, H: panelH, XLabel: c.XLabel, YLabel: c.YLabel}
		xOf, yOf := c.xScale(p, xs), func(v float64) float64 { return p.Y + p.H - (math.Log10(v)-ys[0])/(ys[1]-ys[0])*p.H }
		p.XTicks = c.xTicks(xOf, xs)
		for e := ys[0]; e <= ys[1]; e++ {
			p.YTicks = append(p.YTicks, chartTick{Y: yOf(math.Pow(10, e)), Label: tickLabel(math.Pow(10, e))})
		}
		for _, s := range cp.Series {
			if len(s.Points) == 0 {
				continue
			}
			if _, ok := colors[s.Label]; !ok {
				colors[s.Label] = palette[len(colors)%len(palette)]
				d.Legend = append(d.Legend, chartLegend{Color: colors[s.Label], Width: s.Width, Dash: s.Dash, Label: cmp.Or(s.Legend, s.Label)})
			}
			line := chartLine{Label: s.Label, Color: colors[s.Label], Width: s.Width, Dash: s.Dash}
			for _, pt := range s.Points {
				line.add(xOf(pt.X), yOf(pt.Y))
			}
			p.Lines = append(p.Lines, line)
		}
		if len(p.Lines) == 0 {
			p.Empty = cmp.Or(cp.Empty, "not measured")
		}
		d.Panels = append(d.Panels, p)
	}
	d.Width = left + float64(len(d.Panels))*(c.PanelW+gap) - gap + 30
	d.placeLegend(left, top+panelH+60)
	return d.execute()
}

// ranges returns the decades the axes span: x (when logarithmic) and y,
// over every panel.
func (c chart) ranges() (xs, ys [2]float64) {
	xlo, xhi, ylo, yhi := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, p := range c.Panels {
		for _, s := range p.Series {
			for _, pt := range s.Points {
				xlo, xhi = math.Min(xlo, pt.X), math.Max(xhi, pt.X)
				ylo, yhi = math.Min(ylo, pt.Y), math.Max(yhi, pt.Y)
			}
		}
	}
	if math.IsInf(ylo, 1) {
		xlo, xhi, ylo, yhi = 1, 10000, 10, 10000
	}
	decades := func(lo, hi float64) [2]float64 {
		a, b := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
		return [2]float64{a, max(b, a+1)}
	}
	if c.XLog {
		xs = decades(xlo, xhi)
	}
	return xs, decades(ylo, yhi)
}

// xScale maps an x value to the panel.
func (c chart) xScale(p chartPanel, xs [2]float64) func(float64) float64 {
	if c.XLog {
		return func(v float64) float64 { return p.X + (math.Log10(v)-xs[0])/(xs[1]-xs[0])*p.W }
	}
	n := len(c.XCats)
	return func(j float64) float64 {
		if n == 1 {
			return p.X + p.W/2
		}
		return p.X + 20 + j*(p.W-40)/float64(n-1)
	}
}

func (c chart) xTicks(xOf func(float64) float64, xs [2]float64) []chartTick {
	var ticks []chartTick
	if c.XLog {
		for e := xs[0]; e <= xs[1]; e++ {
			ticks = append(ticks, chartTick{X: xOf(math.Pow(10, e)), Label: tickLabel(math.Pow(10, e))})
		}
		return ticks
	}
	for j, name := range c.XCats {
		ticks = append(ticks, chartTick{X: xOf(float64(j)), Label: name})
	}
	return ticks
}

// tickLabel names a power of ten.
func tickLabel(v float64) string {
	if v < 1 {
		return trimZeros(fmt.Sprintf("%.3f", v))
	}
	return fmtInt(v)
}

// ---- drawing

type chartLine struct {
	Label  string
	Color  string
	Width  float64
	Dash   string
	Points string // "x,y x,y ..."
	Dots   []chartPoint
}

type chartPoint struct{ X, Y float64 }

type chartTick struct {
	X, Y  float64
	Label string
}

type chartPanel struct {
	Title          string
	X, Y, W, H     float64 // plot area
	XTicks, YTicks []chartTick
	Lines          []chartLine
	Empty          string
	XLabel, YLabel string
}

type chartLegend struct {
	X, Y  float64
	Color string
	Width float64
	Dash  string
	Label string
}

type chartData struct {
	Width, Height float64
	Title         string
	Panels        []chartPanel
	Legend        []chartLegend
}

var palette = []string{
	"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
	"#e377c2", "#7f7f7f", "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173",
}

const chartTemplate = `<svg xmlns="http://www.w3.org/2000/svg" width="{{.Width}}" height="{{.Height}}" viewBox="0 0 {{.Width}} {{.Height}}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="#fff"/>
<text x="{{half .Width}}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{{html .Title}}</text>
{{range .Panels}}<g>
<text x="{{add .X (half .W)}}" y="{{add .Y -12}}" text-anchor="middle" font-size="13" font-weight="bold">{{html .Title}}</text>
<rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="none" stroke="#999"/>
{{$p := .}}{{range .YTicks}}<line x1="{{$p.X}}" x2="{{add $p.X $p.W}}" y1="{{.Y}}" y2="{{.Y}}" stroke="#e4e4e4"/>
<text x="{{add $p.X -5}}" y="{{add .Y 4}}" text-anchor="end">{{html .Label}}</text>
{{end}}{{range .XTicks}}<line x1="{{.X}}" x2="{{.X}}" y1="{{$p.Y}}" y2="{{add $p.Y $p.H}}" stroke="#e4e4e4"/>
<text x="{{.X}}" y="{{add $p.Y (add $p.H 16)}}" text-anchor="middle">{{html .Label}}</text>
{{end}}<text x="{{add .X (half .W)}}" y="{{add .Y (add .H 34)}}" text-anchor="middle">{{html .XLabel}}</text>
<text transform="translate({{add .X -48}},{{add .Y (half .H)}}) rotate(-90)" text-anchor="middle">{{html .YLabel}}</text>
{{if .Empty}}<text x="{{add .X (half .W)}}" y="{{add .Y (half .H)}}" text-anchor="middle" fill="#999">{{html .Empty}}</text>
{{end}}{{range .Lines}}<polyline fill="none" stroke="{{.Color}}" stroke-width="{{.Width}}"{{if .Dash}} stroke-dasharray="{{.Dash}}"{{end}} points="{{.Points}}"><title>{{html .Label}}</title></polyline>
{{$l := .}}{{range .Dots}}<circle cx="{{.X}}" cy="{{.Y}}" r="2.5" fill="{{$l.Color}}"/>
{{end}}{{end}}</g>
{{end}}{{range .Legend}}<line x1="{{.X}}" x2="{{add .X 24}}" y1="{{.Y}}" y2="{{.Y}}" stroke="{{.Color}}" stroke-width="{{.Width}}"{{if .Dash}} stroke-dasharray="{{.Dash}}"{{end}}/>
<text x="{{add .X 30}}" y="{{add .Y 4}}">{{html .Label}}</text>
{{end}}</svg>
`

// add appends a point, rounded to a tenth, to the line.
func (l *chartLine) add(x, y float64) {
	pt := chartPoint{X: round(x, 1), Y: round(y, 1)}
	l.Dots = append(l.Dots, pt)
	if l.Points != "" {
		l.Points += " "
	}
	l.Points += fmt.Sprintf("%g,%g", pt.X, pt.Y)
}

// placeLegend sets out the legend in rows from (left, top), 250 wide
// each, and sets the chart's height to hold them.
func (d *chartData) placeLegend(left, top float64) {
	perRow := max(1, int(d.Width-left)/250)
	for i := range d.Legend {
		d.Legend[i].X = left + float64(i%perRow)*250
		d.Legend[i].Y = top + float64(i/perRow)*18
	}
	d.Height = top + float64((len(d.Legend)+perRow-1)/perRow)*18 + 20
}

// execute executes the chart template.
func (d chartData) execute() ([]byte, error) {
	t, err := template.New("chart").Funcs(template.FuncMap{
		"half": func(v float64) float64 { return v / 2 },
		"add":  func(a, b float64) float64 { return a + b },
	}).Parse(chartTemplate)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
