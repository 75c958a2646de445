package policy

import (
	"bytes"
	"fmt"
	"html/template"
	"strings"
	"time"
)

// A disclosure is the customer-facing view of a manifest: each stream that
// leaves the device in plain words, and what never leaves.
type disclosure struct {
	Product string
	Version string
	Sent    []sentStream
	Never   []string
}

type sentStream struct {
	Name, What, Why, Who, Kept, Basis string
	Form                              []string
}

func (m *Manifest) disclosure() disclosure {
	d := disclosure{Product: m.Product, Version: m.Version}
	for _, s := range m.Streams {
		if len(s.Destinations) == 0 {
			keep := "used at once and then discarded"
			if s.DeviceRetention > 0 {
				keep = "kept on the device for " + plainDuration(time.Duration(s.DeviceRetention))
			}
			d.Never = append(d.Never, fmt.Sprintf("%s (%s): %s", describe(s), s.Name, keep))
			continue
		}
		ss := sentStream{Name: s.Name, What: describe(s), Why: strings.Join(s.Purposes, ", ")}
		var who []string
		for _, dst := range s.Destinations {
			if dst.To == "cloud" {
				who = append(who, "the maker's cloud")
			} else {
				who = append(who, fmt.Sprintf("%s, only with your consent to %q", dst.Partner, dst.Consent))
			}
		}
		ss.Who = strings.Join(who, "; ")
		ss.Kept = "as long as the purpose needs"
		if s.CloudRetention > 0 {
			ss.Kept = plainDuration(time.Duration(s.CloudRetention))
		}
		ss.Basis = "needed to provide the service you bought"
		if s.Consent != "" {
			ss.Basis = fmt.Sprintf("only with your consent to %q, which you can withdraw at any time", s.Consent)
		}
		for _, f := range s.Fields {
			if f.Transform.Op == "drop" {
				d.Never = append(d.Never, fmt.Sprintf("the %s of %s (%s)", f.Name, describe(s), f.Category))
				continue
			}
			ss.Form = append(ss.Form, fmt.Sprintf("%s (%s): %s", f.Name, f.Category, plainTransform(&f.Transform)))
		}
		if a := s.Aggregate; a != nil {
			form := fmt.Sprintf("only the %s over each %s", a.Func, plainDuration(time.Duration(a.Window)))
			if a.MinSamples > 1 {
				form += fmt.Sprintf(", and nothing for a period with fewer than %d readings", a.MinSamples)
			}
			ss.Form = append(ss.Form, form)
		}
		d.Sent = append(d.Sent, ss)
	}
	return d
}

func describe(s Stream) string {
	if s.Description != "" {
		return s.Description
	}
	return s.Name
}

func plainTransform(t *Transform) string {
	var parts []string
	for ; t != nil; t = t.Then {
		switch t.Op {
		case "keep":
			parts = append(parts, "sent as it is")
		case "round":
			parts = append(parts, fmt.Sprintf("rounded to the nearest %g", t.Step))
		case "clamp":
			parts = append(parts, fmt.Sprintf("limited to %g to %g", *t.Min, *t.Max))
		case "bucketize":
			parts = append(parts, fmt.Sprintf("only which range it falls in (bounds %v)", t.Bounds))
		case "coarsen_time":
			parts = append(parts, "only the "+plainDuration(time.Duration(t.Bucket))+" it falls in")
		case "coarsen_location":
			if t.Geohash > 0 {
				parts = append(parts, fmt.Sprintf("only the area (geohash of %d characters)", t.Geohash))
			} else {
				parts = append(parts, fmt.Sprintf("only the area (%d decimal places)", t.Decimals))
			}
		case "pseudonymize":
			parts = append(parts, "replaced by a pseudonym that cannot be traced back to it")
		}
	}
	return strings.Join(parts, ", then ")
}

func plainDuration(d time.Duration) string {
	switch {
	case d == 0:
		return "no time"
	case d%(24*time.Hour) == 0 && d >= 24*time.Hour:
		if days := d / (24 * time.Hour); days == 365 {
			return "1 year"
		} else if days == 1 {
			return "day"
		} else {
			return fmt.Sprintf("%d days", days)
		}
	case d%time.Hour == 0:
		if d == time.Hour {
			return "hour"
		}
		return fmt.Sprintf("%d hours", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%d minutes", d/time.Minute)
	}
	return d.String()
}

// DisclosureMarkdown renders the manifest for customers in Markdown.
func (m *Manifest) DisclosureMarkdown() string {
	d := m.disclosure()
	var b strings.Builder
	fmt.Fprintf(&b, "# What %s sends, and why\n\n", d.Product)
	fmt.Fprintf(&b, "Data manifest version %s.\n", d.Version)
	for _, s := range d.Sent {
		fmt.Fprintf(&b, "\n## %s\n\n", s.What)
		fmt.Fprintf(&b, "- **Why:** %s\n", s.Why)
		fmt.Fprintf(&b, "- **Who receives it:** %s\n", s.Who)
		fmt.Fprintf(&b, "- **How long it is kept:** %s\n", s.Kept)
		fmt.Fprintf(&b, "- **On what basis:** %s\n", s.Basis)
		fmt.Fprintf(&b, "- **In what form:**\n")
		for _, f := range s.Form {
			fmt.Fprintf(&b, "  - %s\n", f)
		}
	}
	b.WriteString("\n## What never leaves your device\n\n")
	if len(d.Never) == 0 {
		b.WriteString("Nothing is kept back: everything the product records is listed above.\n")
	}
	for _, n := range d.Never {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	return b.String()
}

var disclosureHTML = template.Must(template.New("disclosure").Parse(`<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>What {{.Product}} sends, and why</title></head>
<body>
<h1>What {{.Product}} sends, and why</h1>
<p>Data manifest version {{.Version}}.</p>
{{range .Sent}}<section>
<h2>{{.What}}</h2>
<dl>
<dt>Why</dt><dd>{{.Why}}</dd>
<dt>Who receives it</dt><dd>{{.Who}}</dd>
<dt>How long it is kept</dt><dd>{{.Kept}}</dd>
<dt>On what basis</dt><dd>{{.Basis}}</dd>
<dt>In what form</dt><dd><ul>{{range .Form}}<li>{{.}}</li>{{end}}</ul></dd>
</dl>
</section>
{{end}}<section>
<h2>What never leaves your device</h2>
<ul>{{range .Never}}<li>{{.}}</li>{{end}}</ul>
</section>
</body>
</html>
`))

// DisclosureHTML renders the manifest for customers as an HTML page; all
// manifest text is escaped.
func (m *Manifest) DisclosureHTML() string {
	var b bytes.Buffer
	if err := disclosureHTML.Execute(&b, m.disclosure()); err != nil {
		panic(err) // the template and its data are ours
	}
	return b.String()
}
