// goxml reads a domain XML on stdin the way virt-launcher does after OnDefineDomain:
// with Go's encoding/xml, strictly, into a struct shaped like KubeVirt's DomainSpec
// (only the parts the hook touches). It prints the hostdevs it understood as JSON,
// or the decoder's error on stderr with exit status 1. Used by tests/test_goxml.py.
package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"os"
)

type Address struct {
	Type     string `xml:"type,attr,omitempty" json:"type,omitempty"`
	Domain   string `xml:"domain,attr" json:"domain"`
	Bus      string `xml:"bus,attr" json:"bus"`
	Slot     string `xml:"slot,attr" json:"slot"`
	Function string `xml:"function,attr" json:"function"`
}

type HostDevice struct {
	Mode    string   `xml:"mode,attr" json:"mode"`
	Type    string   `xml:"type,attr" json:"type"`
	Managed string   `xml:"managed,attr" json:"managed"`
	Driver  *struct {
		Name string `xml:"name,attr" json:"name"`
	} `xml:"driver" json:"driver"`
	Source struct {
		Address *Address `xml:"address" json:"address"`
	} `xml:"source" json:"source"`
	Address *Address `xml:"address" json:"guest_address,omitempty"`
	Alias   *struct {
		Name string `xml:"name,attr" json:"name"`
	} `xml:"alias" json:"alias"`
}

type Domain struct {
	XMLName xml.Name `xml:"domain"`
	Type    string   `xml:"type,attr"`
	Name    string   `xml:"name"`
	Devices struct {
		HostDevices []HostDevice `xml:"hostdev"`
	} `xml:"devices"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Every token, strictly: what a stricter consumer than Unmarshal would see.
	decoder := xml.NewDecoder(bytes.NewReader(data))
	decoder.Strict = true
	for {
		if _, err := decoder.Token(); err == io.EOF {
			break
		} else if err != nil {
			fmt.Fprintln(os.Stderr, "token:", err)
			os.Exit(1)
		}
	}
	var domain Domain
	if err := xml.Unmarshal(data, &domain); err != nil {
		fmt.Fprintln(os.Stderr, "unmarshal:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(domain.Devices.HostDevices)
	fmt.Println(string(out))
}
