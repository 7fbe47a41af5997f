// common.js — the embedded data, shared state, colour scales, canvas heatmaps, legends
// and the tooltip. Every figure below draws into canvases from `D`.
const D=JSON.parse(document.getElementById('report-data').textContent);
const L=D.n_layers, H=D.n_heads;
const S={prompt:0, head:[Math.max(0,L-1),0], mode:'attn', hover:-1};
const tip=document.getElementById('tip');
function $(id){return document.getElementById(id);}
function el(tag,attrs,parent,text){const e=document.createElement(tag);if(attrs)for(const k in attrs){if(k==='class')e.className=attrs[k];else e.setAttribute(k,attrs[k]);}if(text!==undefined)e.textContent=text;if(parent)parent.appendChild(e);return e;}
function b64(s){const b=atob(s);const u=new Uint8Array(b.length);for(let i=0;i<b.length;i++)u[i]=b.charCodeAt(i);return u;}
function clamp(v,a,b){return Math.max(a,Math.min(b,v));}
// Sequential (white → blue) for [0, 1]; diverging (blue − / white 0 / red +) for [-1, 1].
function seq(t){t=clamp(t,0,1);return [255-222*t,255-153*t,255-75*t];}
function div(t){t=clamp(t,-1,1);return t>=0?[255-35*t,255-175*t,255-185*t]:[255+205*t,255+135*t,255+25*t];}
function css(c){return 'rgb('+(c[0]|0)+','+(c[1]|0)+','+(c[2]|0)+')';}
function fmt(v){if(!isFinite(v))return '–';const a=Math.abs(v);return a>=100?v.toFixed(0):a>=10?v.toFixed(1):v.toFixed(3);}
function f2(x){return (typeof x==='number'&&isFinite(x))?x.toFixed(2):'–';}
function tokLabel(t){return (D.vocab&&D.vocab[t]!==undefined)?D.vocab[t]:'#'+t;}
function short(s,n){return s.length>n?s.slice(0,n-1)+'…':s;}
function showTip(ev,text){tip.textContent=text;tip.style.display='block';const x=ev.clientX+14,y=ev.clientY+12;tip.style.left=Math.min(x,window.innerWidth-tip.offsetWidth-8)+'px';tip.style.top=Math.min(y,window.innerHeight-tip.offsetHeight-8)+'px';}
function hideTip(){tip.style.display='none';}
function headName(l,h){return 'L'+l+'H'+h;}
// A canvas of CSS size w × h, sharp on high-DPI screens.
function mkCanvas(parent,w,h,cls){const c=el('canvas',cls?{class:cls}:null,parent);const r=window.devicePixelRatio||1;c.width=Math.round(w*r);c.height=Math.round(h*r);c.style.width=w+'px';c.style.height=h+'px';const x=c.getContext('2d');x.scale(r,r);return [c,x];}
// How many distinct colours a canvas shows (sampled): the tests' "non-trivial content".
function countColours(c){const d=c.getContext('2d').getImageData(0,0,c.width,c.height).data;const set=new Set();const step=Math.max(1,Math.floor(d.length/4/40000));for(let i=0;i<d.length;i+=4*step)set.add((d[i]<<16)|(d[i+1]<<8)|d[i+2]);c.dataset.colours=set.size;return set.size;}
// rows × cols cells drawn as one image scaled up without smoothing: colour(r,c) → [r,g,b]
// or null (masked: light grey).
function drawCells(x,x0,y0,rows,cols,cw,ch,colour){
  const off=document.createElement('canvas');off.width=cols;off.height=rows;const ox=off.getContext('2d');
  const img=ox.createImageData(cols,rows);const d=img.data;
  for(let r=0;r<rows;r++)for(let c=0;c<cols;c++){const v=colour(r,c)||[244,245,247];const i=(r*cols+c)*4;d[i]=v[0];d[i+1]=v[1];d[i+2]=v[2];d[i+3]=255;}
  ox.putImageData(img,0,0);x.imageSmoothingEnabled=false;x.drawImage(off,x0,y0,cols*cw,rows*ch);
  x.strokeStyle='#c9ced6';x.lineWidth=1;x.strokeRect(x0+.5,y0+.5,cols*cw-1,rows*ch-1);
}
// A labelled heatmap: o = {rows, cols, cell, colour(r,c), rowLabels, colLabels,
// tip(r,c) → text, click(r,c), font}. Labels are thinned so that they never overlap.
function heatmap(parent,o){
  const font=o.font||11, cell=o.cell;
  const lw=o.rowLabels?Math.min(96,6+Math.max(...o.rowLabels.map(s=>s.length))*font*0.62):1;
  const th=o.colLabels?Math.min(96,6+Math.max(...o.colLabels.map(s=>s.length))*font*0.62):1;
  const W=lw+o.cols*cell+4, Hh=th+o.rows*cell+4;
  const [c,x]=mkCanvas(parent,W,Hh,o.cls||'hm');
  x.fillStyle='#fff';x.fillRect(0,0,W,Hh);
  drawCells(x,lw,th,o.rows,o.cols,cell,cell,o.colour);
  x.fillStyle='#222';x.font=font+'px ui-monospace,monospace';
  const step=Math.max(1,Math.ceil((font+1)/cell));
  if(o.rowLabels){x.textAlign='right';x.textBaseline='middle';for(let r=0;r<o.rows;r+=step)x.fillText(short(o.rowLabels[r],14),lw-3,th+(r+.5)*cell);}
  if(o.colLabels){x.textAlign='left';x.textBaseline='middle';for(let k=0;k<o.cols;k+=step){x.save();x.translate(lw+(k+.5)*cell,th-3);x.rotate(-Math.PI/2);x.fillText(short(o.colLabels[k],14),0,0);x.restore();}}
  const at=ev=>{const b=c.getBoundingClientRect();const r=Math.floor((ev.clientY-b.top-th)/cell),k=Math.floor((ev.clientX-b.left-lw)/cell);return (r>=0&&k>=0&&r<o.rows&&k<o.cols)?[r,k]:null;};
  if(o.tip){c.addEventListener('mousemove',ev=>{const p=at(ev);if(!p){hideTip();return;}const t=o.tip(p[0],p[1]);if(t)showTip(ev,t);else hideTip();});c.addEventListener('mouseleave',hideTip);}
  if(o.click)c.addEventListener('click',ev=>{const p=at(ev);if(p)o.click(p[0],p[1]);});
  countColours(c);c.classList.add('figure');
  return c;
}
// A colour-scale legend: kind 'seq' (lo..hi) or 'div' (−hi..hi), with a label.
function legend(parent,kind,lo,hi,label){
  const box=el('div',{class:'lg'},parent);el('div',null,box,label);
  const [c,x]=mkCanvas(box,160,12);
  for(let i=0;i<160;i++){const t=i/159;x.fillStyle=css(kind==='seq'?seq(t):div(2*t-1));x.fillRect(i,0,1,12);}
  const t=el('div',{style:'display:flex;justify-content:space-between;width:160px'},box);
  el('span',null,t,fmt(kind==='seq'?lo:-hi));el('span',null,t,fmt(kind==='seq'?(lo+hi)/2:0));el('span',null,t,fmt(hi));
  return c;
}
// A [layer][head] table coloured on a sequential scale (values in [0, 1]).
function gridTable(parent,id,title,v){
  const d=el('div',null,parent);el('h3',null,d,title);
  const t=el('table',{class:'grid',id:id},d);let tr=el('tr',null,t);el('th',null,tr,'');
  for(let h=0;h<H;h++)el('th',null,tr,'H'+h);
  for(let l=0;l<L;l++){tr=el('tr',null,t);el('th',null,tr,'L'+l);for(let h=0;h<H;h++){const x=v[l][h];const td=el('td',{title:headName(l,h)+': '+x},tr,f2(x));td.style.background=Number.isFinite(x)?css(seq(x)):'#eee';td.style.color=x>0.6?'#fff':'#111';td.style.cursor='pointer';td.addEventListener('click',()=>selectHead(l,h));}}
}
